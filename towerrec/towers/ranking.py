"""The ranking model: a DCN (cross network + deep layers) that rescores retrieval's top-K."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs


class Ranker(tfrs.Model):
    """Per-candidate features [batch, list, features] -> scores [batch, list].

    Trained listwise: a softmax over each query's retrieved list against its held-out
    positives (labels [batch, list], 1 for a positive), so that the loss is about the order
    within a list, which is all a reranker changes.
    """

    def __init__(self, num_features: int, cross_layers: int = 2, deep_dims=(128, 64)):
        super().__init__()
        self.normalize = tf.keras.layers.Normalization(axis=-1)
        self.cross = [tfrs.layers.dcn.Cross() for _ in range(cross_layers)]
        self.deep = [tf.keras.layers.Dense(d, activation="relu") for d in deep_dims]
        self.score = tf.keras.layers.Dense(1)
        self.num_features = num_features
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM))

    def call(self, features, training=False):
        shape = tf.shape(features)
        x = tf.reshape(features, [-1, self.num_features])
        x0 = self.normalize(x)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.deep:
            x = layer(x)
        return tf.reshape(self.score(x), shape[:2])

    def compute_loss(self, inputs, training=False):
        features, labels = inputs
        labels = labels / tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), 1.0)
        return self.task(labels=labels, predictions=self(features, training=training))


def rerank_order(ranker_scores: tf.Tensor, is_new: tf.Tensor) -> tf.Tensor:
    """Positions [n, k] into retrieval's list: the reranked order.

    Items with interactions are reordered by `ranker_scores` [n, k]; a new item (`is_new`
    [n, k], no interactions yet) keeps the slot retrieval gave it. The ranker's strongest
    features (co-occurrence, popularity) are behavioural, so it would bury every new item;
    holding their slots keeps the cold-start promise while the rest is reranked.
    """
    is_new = tf.cast(is_new, tf.bool)
    warm_first = tf.argsort(tf.where(is_new, -np.inf, ranker_scores), axis=1,
                            direction="DESCENDING", stable=True)
    warm_slot = tf.cumsum(tf.cast(~is_new, tf.int32), axis=1) - 1
    from_warm = tf.gather(warm_first, tf.maximum(warm_slot, 0), batch_dims=1)
    return tf.where(is_new, tf.range(tf.shape(is_new)[1])[None, :], from_warm)
