"""towerrec pipelines: config -> data -> splits -> train -> evaluate, one module a step."""
