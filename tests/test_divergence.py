"""A model that diverged is never saved or published (issue 14, probe defect 10): training
stops at the first NaN loss and leaves the run's model as it was; export refuses
non-finite candidate embeddings."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.export.export import export_models
from towerrec.training.run import load_run
from towerrec.training.train import ModelError, check_finite, train

import numpy as np
import pytest

from tests.conftest import slice_config

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large


def test_a_diverging_training_saves_nothing_and_export_refuses_nan(
        tiny_encoder_dir, movielens_slice, tmp_path):
    config = slice_config(movielens_slice, tmp_path / "run", **{"training.epochs": 1})
    train(config, encoder_dir=tiny_encoder_dir, verbose=0)
    weights = config.run_path / "model" / "weights.data-00000-of-00001"
    saved = weights.read_bytes()

    diverging = slice_config(movielens_slice, tmp_path / "run", **{
        "training.epochs": 3, "training.learning_rate": 1e30})
    with pytest.raises(ModelError, match=r"training diverged: the loss became nan in epoch 1"):
        train(diverging, encoder_dir=tiny_encoder_dir, verbose=0)
    assert weights.read_bytes() == saved  # the run's model is the good one still

    run = load_run(config, encoder_dir=tiny_encoder_dir)
    variable = run.model.candidate_tower.trainable_variables[0]
    variable.assign(np.full(variable.shape, np.nan, variable.dtype.as_numpy_dtype))
    with pytest.raises(ModelError, match="candidate embeddings are not finite"):
        export_models(run, tmp_path / "models")
    assert not list((tmp_path / "models").glob("*/*"))  # nothing staged or published


def test_check_finite_names_how_many_rows_are_not():
    embeddings = np.ones((4, 2), np.float32)
    assert check_finite(embeddings, "rows") is embeddings
    embeddings[1, 0], embeddings[3, 1] = np.nan, np.inf
    with pytest.raises(ModelError, match="2 of 4 rows are not finite"):
        check_finite(embeddings, "rows")
