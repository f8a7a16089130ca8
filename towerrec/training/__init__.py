"""Training: the two towers, the item prior and its calibration, the ranker, accelerators."""
