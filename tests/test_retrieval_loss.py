"""The two-tower loss by hand on a 3x3 batch: in-batch softmax with temperature, log-Q
correction and accidental hits removed."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.retrieval import TwoTowerModel

import numpy as np
import pytest
import tensorflow as tf

QUERIES = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
CANDIDATES = np.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], np.float32)
PROBABILITY = np.array([0.5, 0.25, 0.25], np.float32)
# Rows 0 and 2 are the same item: for query 0, candidate 2 is its own positive again.
ITEM_INDEX = np.array([7, 8, 7], np.int64)
TEMPERATURE = 0.5


def _model(logq: bool, hits: bool) -> TwoTowerModel:
    return TwoTowerModel(tf.keras.layers.Lambda(lambda f: f["query"]),
                         tf.keras.layers.Lambda(lambda f: f["candidate"]),
                         temperature=TEMPERATURE, logq_correction=logq,
                         remove_accidental_hits=hits)


def _by_hand(logq: bool, hits: bool) -> float:
    logits = QUERIES @ CANDIDATES.T / TEMPERATURE
    if logq:
        logits = logits - np.log(PROBABILITY)[None, :]
    total = 0.0
    for i in range(3):
        row = logits[i].copy()
        if hits:  # another column with the positive's id is not a negative
            row[(ITEM_INDEX == ITEM_INDEX[i]) & (np.arange(3) != i)] = -np.inf
        total += -(row[i] - np.log(np.exp(row[np.isfinite(row)]).sum()))
    return total  # tfrs sums over the batch


@pytest.mark.parametrize("logq,hits", [(False, False), (True, False), (False, True),
                                       (True, True)])
def test_loss_equals_the_hand_computed_softmax(logq, hits):
    features = {"query": tf.constant(QUERIES), "candidate": tf.constant(CANDIDATES),
                "item_probability": tf.constant(PROBABILITY),
                "item_index": tf.constant(ITEM_INDEX)}
    loss = float(_model(logq, hits).compute_loss(features))
    assert loss == pytest.approx(_by_hand(logq, hits), rel=1e-4)


def test_each_correction_changes_the_loss():
    values = {(q, h): _by_hand(q, h) for q in (False, True) for h in (False, True)}
    assert len({round(v, 4) for v in values.values()}) == 4
