"""LazyAdam: Adam on the rows a sparse gradient names, nothing on the others."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.optimizers import LazyAdam

import numpy as np
import tensorflow as tf


def _adam_rows(table, gradients, lr=0.1, b1=0.9, b2=0.999, eps=1e-7):
    """Adam by hand, each step's gradient {row: vector}; untouched rows keep their moments."""
    table = table.copy()
    m, v = np.zeros_like(table), np.zeros_like(table)
    for t, step in enumerate(gradients, start=1):
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for row, g in step.items():
            m[row] = b1 * m[row] + (1 - b1) * g
            v[row] = b2 * v[row] + (1 - b2) * g ** 2
            table[row] -= alpha * m[row] / (np.sqrt(v[row]) + eps)
    return table


def test_sparse_updates_touch_only_the_batch_rows_and_match_adam_by_hand():
    start = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    table = tf.Variable(start)
    optimizer = LazyAdam(0.1)
    g1, g2 = np.array([1.0, -2.0, 0.5], np.float32), np.array([0.3, 0.3, -1.0], np.float32)
    # Step 1: row 1 twice (its gradients add up), row 3 once. Step 2: row 3 only.
    optimizer.apply_gradients([(tf.IndexedSlices(tf.constant([g1, g1, g2]),
                                                 tf.constant([1, 3, 1])), table)])
    optimizer.apply_gradients([(tf.IndexedSlices(tf.constant([g2]), tf.constant([3])),
                                table)])
    expected = _adam_rows(start, [{1: g1 + g2, 3: g1}, {3: g2}])
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.numpy()[[0, 2]], start[[0, 2]])


def test_dense_gradients_take_adams_own_update():
    start = np.ones([2, 2], np.float32)
    lazy, keras = tf.Variable(start), tf.Variable(start)
    gradient = tf.constant([[0.5, -1.0], [2.0, 0.0]])
    LazyAdam(0.01).apply_gradients([(gradient, lazy)])
    tf.keras.optimizers.Adam(0.01).apply_gradients([(gradient, keras)])
    np.testing.assert_allclose(lazy.numpy(), keras.numpy(), rtol=1e-6)
