"""The benchmark's bookkeeping: tuning picks by validation, summaries over seeds, verdicts."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from towerrec.data.features import Queries  # noqa: E402
from towerrec.evaluation.topk import DotScores  # noqa: E402

import baselines  # noqa: E402


def queries(targets):
    n = len(targets)
    return Queries(np.array(["u"] * n, dtype=object), np.full((n, 1), "", dtype=object),
                   np.array([""] * n, dtype=object), [np.array(t) for t in targets],
                   [np.zeros(0, np.int64) for _ in targets])


def prefers(row: int):
    """A scorer that puts catalogue row `row` first (of 3)."""
    items = np.eye(3, dtype=np.float32)
    return lambda q: DotScores(np.tile(items[row], (len(q), 1)), items)


def test_tune_chooses_per_split_by_the_validation_metric():
    grid = {"a": lambda: prefers(0), "b": lambda: prefers(2)}
    held_out = {"warm": queries([[2], [2]]), "cold_item": queries([[0]])}
    assert baselines.tune(grid, held_out) == {"warm": "b", "cold_item": "a"}


def metrics(value, se=0.01):
    return {m: value for m in ("recall_at_10", "recall_at_100", "ndcg_at_10")} | {
        f"{m}_se": se for m in ("recall_at_10", "recall_at_100", "ndcg_at_10")}


def test_summary_and_verdicts_over_seeds_leave_unscored_cells_out(capsys):
    runs = [{"results": {"towerrec": {"warm": metrics(0.30), "cold_user": metrics(0.5)},
                         "towerrec+rerank": {"warm": metrics(0.31)},
                         "als": {"warm": metrics(0.20), "cold_user": metrics(0.9)},
                         "popularity": {"warm": metrics(0.1), "cold_user": metrics(0.4)}}},
            {"results": {"towerrec": {"warm": metrics(0.20), "cold_user": metrics(0.5)},
                         "towerrec+rerank": {"warm": metrics(0.21)},
                         "als": {"warm": metrics(0.20), "cold_user": metrics(0.9)},
                         "popularity": {"warm": metrics(0.1), "cold_user": metrics(0.4)}}}]
    table = baselines.summary(runs)
    warm = table["towerrec"]["warm"]["ndcg_at_10"]
    assert warm["values"] == [0.30, 0.20] and np.isclose(warm["mean"], 0.25)
    assert (warm["min"], warm["max"]) == (0.20, 0.30)
    assert "cold_user" not in table["als"]  # ALS cannot score a new user: left out
    verdict = baselines.verdicts(table)
    assert verdict["towerrec/warm/ndcg_at_10"]["best_baseline"] == "als"
    assert np.isclose(verdict["towerrec/warm/ndcg_at_10"]["ratio"], 1.25)
    assert verdict["towerrec/warm/ndcg_at_10"]["verdict"] == "BEATS"
    assert verdict["towerrec/cold_user/ndcg_at_10"]["best_baseline"] == "popularity"
    variant = baselines.verdicts(baselines.summary([{"results": {
        "towerrec": {"warm": metrics(0.30)}, "towerrec[mean]": {"warm": metrics(0.9)},
        "als": {"warm": metrics(0.20)}}}]))
    # Another history encoder of towerrec is reported, never judged as a baseline.
    assert variant["towerrec/warm/ndcg_at_10"]["best_baseline"] == "als"
    close = baselines.verdicts(baselines.summary([{"results": {
        "towerrec": {"warm": metrics(0.205)}, "als": {"warm": metrics(0.20)}}}]))
    assert close["towerrec/warm/ndcg_at_10"]["verdict"] == "within noise"
    assert "within noise" in capsys.readouterr().out
