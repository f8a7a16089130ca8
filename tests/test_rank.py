"""The ranking stage: held-out lists, features, a rerank that only reorders and keeps new
items in their slots, and a saved ranker that scores as the trained one did."""
from __future__ import annotations

import types

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.evaluation.evaluate import split_queries
from towerrec.towers.candidate import CandidateFeatures
from towerrec.towers.ranking import rerank_order
from towerrec.towers.ranking_features import NO_ROW, NUM_FEATURES
from towerrec.training.rank import (
    candidate_lists,
    cooccurrence_neighbours,
    hold_out_last,
    item_attributes,
    list_features,
    load_ranker,
    ranking_features,
    rerank,
    train_ranker,
)
from towerrec.training.train import train

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import slice_config


@pytest.fixture(scope="module")
def run(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rank_run")
    (run_dir / "encoder").symlink_to(tiny_encoder_dir)
    config = slice_config(movielens_slice, run_dir, **{"training.epochs": 2})
    return train(config, verbose=0)


@pytest.fixture(scope="module")
def trained_ranker(run):
    """(two-stage results, the ranker trained in this process)."""
    results = train_ranker(run.config, verbose=0)
    return results, load_ranker(run)


@pytest.mark.large
def test_hold_out_last_is_temporal_per_user(run):
    earlier, later = hold_out_last(run.splits["train"], 0.2)
    assert len(earlier) + len(later) == len(run.splits["train"])
    last = earlier.groupby("user_id")["timestamp"].max()
    first = later.groupby("user_id")["timestamp"].min()
    assert (last.loc[first.index] <= first).all()


def test_cooccurrence_neighbours_are_items_seen_by_the_same_users():
    # users 0 and 1 saw items 0 and 1; user 2 saw items 1 and 2; item 3 is new.
    rows = np.array([0, 1, 0, 1, 1, 2])
    users = np.array([0, 0, 1, 1, 2, 2])
    neighbours, weights = cooccurrence_neighbours(rows, users, 4, neighbours=2)
    assert neighbours[0].tolist() == [1, NO_ROW]
    assert neighbours[1].tolist() == [0, 2]               # 2 users / sqrt(2*3) > 1 / sqrt(3)
    assert weights[1, 0] > weights[1, 1] > 0
    assert neighbours[3].tolist() == [NO_ROW, NO_ROW]     # a new item has no neighbours
    assert 3 not in neighbours


@pytest.mark.large
def test_lists_label_the_held_out_items_and_features_are_finite(run):
    queries = split_queries(run, "warm")
    lists = candidate_lists(run, queries, k=50)
    assert lists.rows.shape == (len(queries), 50) == lists.labels.shape
    for rows, labels, targets, seen in zip(lists.rows, lists.labels, queries.targets,
                                           queries.exclude):
        np.testing.assert_array_equal(labels, np.isin(rows, targets))
        assert not np.isin(rows, seen).any()  # training items are never candidates
    features = list_features(ranking_features(run, run.splits["train"]), lists)
    assert features.shape == (len(queries), 50, NUM_FEATURES)
    assert np.isfinite(features).all()


def test_rerank_order_keeps_new_items_in_their_slots():
    scores = tf.constant([[0.1, 0.9, 0.5, 0.3, 0.8]])
    is_new = tf.constant([[False, True, False, False, True]])
    # Items 0, 2, 3 are reordered by score (2, 3, 0) into slots 0, 2, 3.
    assert rerank_order(scores, is_new).numpy().tolist() == [[2, 1, 3, 0, 4]]


@pytest.mark.large
def test_rerank_only_reorders_and_cold_items_keep_their_slots(run, trained_ranker):
    _, ranker = trained_ranker
    features = ranking_features(run, run.splits["train"])
    queries = split_queries(run, "cold_item")
    lists = candidate_lists(run, queries, k=50)
    reordered = rerank(ranker, features, lists)
    np.testing.assert_array_equal(np.sort(reordered, axis=1), np.sort(lists.rows, axis=1))
    new = features.is_new(lists.rows).numpy()
    assert new.any() and (~new).any()
    np.testing.assert_array_equal(reordered[new], lists.rows[new])
    assert (reordered != lists.rows).any()


@pytest.mark.large
def test_saved_ranker_scores_as_the_trained_one(run, trained_ranker):
    results, ranker = trained_ranker
    from towerrec.training.rank import evaluate_two_stages
    again = evaluate_two_stages(run, ranker)
    for stage, splits in results.items():
        for split, metrics in splits.items():
            assert again[stage][split] == pytest.approx(metrics, abs=1e-6), (stage, split)
    assert set(results["retrieval+rerank"]) == {"warm", "cold_item", "cold_user"}
    assert (results["retrieval+rerank"]["cold_item"]
            == results["retrieval"]["cold_item"])  # cold items keep their slots


def test_weighted_mean_is_the_contraction_it_replaced():
    from towerrec.towers.features import weighted_mean
    rng = np.random.default_rng(0)
    weights = tf.constant(rng.random((3, 5)), tf.float32)
    for dtype in (tf.float32, tf.float16):  # the text tables are float16
        values = tf.constant(rng.standard_normal((3, 5, 7)), dtype)
        expected = tf.einsum("bh,bhd->bd", weights, tf.cast(values, tf.float32))
        np.testing.assert_allclose(weighted_mean(weights, values), expected, atol=1e-5)


def test_item_attributes_are_the_candidate_towers_encoding():
    """The ranker's attribute table is the candidate tower's: an unknown genre sets the
    unknown column, a missing year its flag; batches join in catalogue order."""
    preprocess = CandidateFeatures(["i1", "i2", "i3"], {"genres": ["Drama", "Comedy"]},
                                   {"year": (1990.0, 10.0)})
    catalogue = {"item_id": np.array(["i1", "i2", "i3"], dtype=object),
                 "genres": np.array(["Drama|Comedy", "Western", "Comedy"], dtype=object),
                 "year": np.array([2000.0, np.nan, 1980.0], np.float32)}
    run = types.SimpleNamespace(
        catalogue=catalogue,
        model=types.SimpleNamespace(candidate_tower=types.SimpleNamespace(preprocess=preprocess)))
    # columns: genres [unknown, Drama, Comedy], year [standardized, missing]
    expected = np.array([[0, 1, 1, 1, 0],
                         [1, 0, 0, 0, 1],
                         [0, 0, 1, -1, 0]], np.float32)
    np.testing.assert_allclose(item_attributes(run, batch_size=2), expected)
