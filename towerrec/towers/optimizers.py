"""Adam that updates only the embedding rows a batch touched (lazy Adam)."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)

import tensorflow as tf


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam; for a sparse gradient (an embedding's rows, tf.IndexedSlices) only those rows
    and their moments are updated, as in TF Addons' LazyAdam.

    Keras' Adam decays every row's moments and moves every row of a table at each step,
    even when the gradient names 512 of them: work O(table) per step, which at a million
    items (and half a million users) costs several times the rest of the step. Rows that a
    batch does not touch keep their moments here; dense gradients take Adam's own update.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        if self.amsgrad:
            raise ValueError("LazyAdam does not implement amsgrad")
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = (tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step))
                 / (1 - tf.pow(beta_1, step)))
        epsilon = tf.cast(self.epsilon, dtype)
        if getattr(self, "adaptive_epsilon", False):
            epsilon = epsilon * tf.sqrt(1 - tf.pow(beta_2, step))
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        # A row may appear several times (two towers share the item embedding).
        rows, position = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon),
                                              rows))
