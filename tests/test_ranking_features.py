"""Each of the ranker's 13 features, by hand, on a hand-made catalogue and history."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.ranking_features import NO_ROW, NUM_FEATURES, ItemTables, RankingFeatures

import numpy as np

L = np.log1p
# Four items; item 2 is new (no interactions: zero popularity, no neighbours).
TABLES = ItemTables(
    attributes=np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32),
    text=np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6]], np.float32),
    popularity=L(np.array([3, 1, 0, 2], np.float32)),
    recent_popularity=L(np.array([1, 0, 0, 2], np.float32)),
    neighbours=np.array([[1, 3], [0, NO_ROW], [NO_ROW, NO_ROW], [0, NO_ROW]]),
    neighbour_weights=np.array([[0.5, 0.2], [0.5, 0], [0, 0], [0.2, 0]], np.float32))
HISTORY = np.array([[NO_ROW, NO_ROW, 0, 1]])   # items 0 then 1, left-padded
CANDIDATES = np.array([[3, 2, 1]])
SCORES = np.array([[2.0, 1.0, 0.0]], np.float32)
NAMES = ["z_score", "gap", "rank", "text_mean", "text_max", "attribute_overlap",
         "cooc_mean", "cooc_recent", "popularity", "recent_popularity", "is_new",
         "history_length", "has_history"]


def test_every_feature_by_hand():
    features = RankingFeatures(TABLES)(HISTORY, CANDIDATES, SCORES).numpy()[0]
    assert features.shape == (3, NUM_FEATURES) == (3, len(NAMES))
    expected = {
        "z_score": (np.array([2.0, 1.0, 0.0]) - 1.0) / np.sqrt(2 / 3),
        "gap": [0.0, -1.0, -2.0],
        "rank": [0.0, 1 / 3, 2 / 3],
        # text . history items 0 (1, 0) and 1 (0, 1): item 3 (.8, .6), 2 (.6, .8), 1 (0, 1)
        "text_mean": [0.7, 0.7, 0.5],
        "text_max": [0.8, 0.8, 1.0],
        # the history's mean attributes are (.5, .5)
        "attribute_overlap": [0.0, 1.0, 0.5],
        # item 0's neighbours: 1 (.5), 3 (.2); item 1's: 0 (.5)
        "cooc_mean": [0.1, 0.0, 0.25],
        "cooc_recent": [0.2, 0.0, 0.5],
        "popularity": L([2.0, 0.0, 1.0]),
        "recent_popularity": L([2.0, 0.0, 0.0]),
        "is_new": [0.0, 1.0, 0.0],
        "history_length": [L(2.0)] * 3,
        "has_history": [1.0] * 3,
    }
    for column, name in enumerate(NAMES):
        np.testing.assert_allclose(features[:, column], expected[name], atol=2e-3,
                                   err_msg=name)


def test_a_request_without_history_has_no_history_features():
    features = RankingFeatures(TABLES)(np.full([1, 4], NO_ROW), CANDIDATES, SCORES).numpy()[0]
    for name in ("text_mean", "text_max", "attribute_overlap", "cooc_mean", "cooc_recent",
                 "history_length", "has_history"):
        np.testing.assert_array_equal(features[:, NAMES.index(name)], 0.0, err_msg=name)
