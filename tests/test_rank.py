"""The ranking stage's data: held-out lists, labels, and a reranking that only reorders."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluate import split_queries
from pipelines.rank import candidate_lists, hold_out_last, rerank
from pipelines.train import train
from tests.conftest import slice_config
from towers.ranking import Ranker


@pytest.fixture(scope="module")
def run(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    config = slice_config(movielens_slice, tmp_path_factory.mktemp("rank_run"),
                          **{"training.epochs": 2})
    return train(config, encoder_dir=tiny_encoder_dir, verbose=0)


def test_hold_out_last_is_temporal_per_user(run):
    earlier, later = hold_out_last(run.splits["train"], 0.2)
    assert len(earlier) + len(later) == len(run.splits["train"])
    last = earlier.groupby("user_id")["timestamp"].max()
    first = later.groupby("user_id")["timestamp"].min()
    assert (last.loc[first.index] <= first).all()


def test_lists_label_the_held_out_items_and_rerank_only_reorders(run):
    queries = split_queries(run, "warm")
    lists = candidate_lists(run, queries, k=50)
    assert lists.rows.shape == (len(queries), 50) == lists.labels.shape
    for rows, labels, targets, seen in zip(lists.rows, lists.labels, queries.targets,
                                           queries.exclude):
        np.testing.assert_array_equal(labels, np.isin(rows, targets))
        assert not np.isin(rows, seen).any()  # training items are never candidates
    ranker = Ranker(lists.features.shape[2])
    ranker.normalize.adapt(lists.features.reshape(-1, lists.features.shape[2]))
    reordered = rerank(ranker, lists)
    np.testing.assert_array_equal(np.sort(reordered, axis=1), np.sort(lists.rows, axis=1))
