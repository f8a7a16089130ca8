"""towerrec towers: the text encoder boundary, the query and candidate towers, the model."""
