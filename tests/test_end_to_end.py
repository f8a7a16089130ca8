"""Tiny BERT, real data: train, calibrate the item prior and evaluate on a MovieLens slice;
beats popularity (warm)."""
from __future__ import annotations

import json

from towerrec.config import to_dict
from towerrec.evaluation.evaluate import evaluate_run, evaluate_scores, split_queries
from towerrec.pipelines.cli import main
from towerrec.training.calibrate import (
    CALIBRATION_DIR,
    HALF_LIVES_DAYS,
    NEW_ITEM_QUANTILES,
    WEIGHTS,
    calibrate_prior,
)
from towerrec.training.train import train

import numpy as np
import pytest
import yaml

from tests.conftest import slice_config

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large


def test_train_and_evaluate_beats_popularity_on_warm(tiny_encoder_dir, movielens_slice,
                                                     tmp_path):
    config = slice_config(movielens_slice, tmp_path, **{
        "training.epochs": 8, "towers.history_encoder": "attention"})  # the default
    run = train(config, encoder_dir=tiny_encoder_dir, verbose=0)
    assert run.prior.off  # `prior.calibrate` (the default): none until calibrated
    (tmp_path / "encoder").symlink_to(tiny_encoder_dir)
    settings = calibrate_prior(run)
    assert run.prior == settings and settings.chosen["calibrated"]
    assert settings.half_life_days in HALF_LIVES_DAYS
    assert {settings.weight_with_history, settings.weight_without_history} <= set(WEIGHTS)
    # Validation chose by its figures: the chosen weights did at least as well as none.
    validation = settings.chosen["validation"]
    assert set(validation) == {"warm", "cold_user"}
    for figures in validation.values():
        assert figures["with_prior"] >= figures["without_prior"]
    # New items start at the lowest quantile that finds them as often as no prior does.
    cold = settings.chosen["cold_item"]
    assert settings.new_item_quantile in NEW_ITEM_QUANTILES
    assert cold["with_prior"] >= cold["without_prior"] or settings.new_item_quantile == 1.0
    assert not (tmp_path / CALIBRATION_DIR).exists()  # the validation model is gone
    metrics = evaluate_run(run)
    assert set(metrics) == {"warm", "cold_item", "cold_user"}

    queries = split_queries(run, "warm")
    row_of = {item: r for r, item in enumerate(run.catalogue["item_id"])}
    counts = np.bincount([row_of[i] for i in run.splits["train"]["item_id"]],
                         minlength=len(row_of)).astype(np.float32)
    popularity = evaluate_scores(np.tile(counts, (len(queries), 1)), queries)
    print("towerrec", metrics["warm"], "popularity", popularity)
    assert metrics["warm"]["recall_at_10"] > popularity["recall_at_10"]
    assert metrics["warm"]["ndcg_at_10"] > popularity["ndcg_at_10"]
    # A new item is reachable from its text and attributes: far above chance (~100/1682).
    assert metrics["cold_item"]["recall_at_100"] > 0.1

    # Logs and checkpoints are written; `towerrec evaluate` reloads the saved model.
    assert list((tmp_path / "logs").glob("*/train/events.out.tfevents.*"))
    assert list((tmp_path / "checkpoints").glob("ckpt-*.index"))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    assert main(["evaluate", "--config", str(config_path)]) == 0  # with the saved prior
    reloaded = json.loads((tmp_path / "evaluation.json").read_text())
    for split in metrics:
        for name in ("recall_at_10", "recall_at_100", "ndcg_at_10"):
            assert abs(reloaded[split][name] - metrics[split][name]) < 1e-6
