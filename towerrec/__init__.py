"""towerrec: BERT two-tower retrieval on TensorFlow Recommenders, served the TF Serving way.

The flow and its packages: `towerrec.config` (every default) -> `towerrec.data` (sources,
splits, features) -> `towerrec.towers` (the encoder boundary, towers, models) ->
`towerrec.training` (training, the item prior, the ranker) -> `towerrec.evaluation`
(metrics, top-k, plots) -> `towerrec.export` (index, SavedModels, publishing) ->
`towerrec.serving` (the TF Serving API over exported models); `towerrec.pipelines` holds
the CLI and the steps that chain the others (add-items, retrain).

TFRS 0.7.7 needs Keras 2 (tf_keras) while keras-hub is Keras 3. The switch must be set before
TensorFlow is first imported, so it is set here, once, for the whole package.
"""
import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "towerrec needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported: import towerrec "
        "before tensorflow, or set the variable in the environment")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
