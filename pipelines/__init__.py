"""towerrec pipelines: config -> data -> splits -> train -> evaluate, one module a step."""
import towers  # noqa: F401  (sets the Keras 2 switch before TensorFlow loads)
