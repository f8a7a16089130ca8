"""The query tower: who asks (user id, optional), what they did (history), what they say."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
import tensorflow as tf

from towerrec.towers.features import (MASK_INDEX, OOV_INDEX, TextVector, drop_to_oov, mlp,
                             string_lookup, unit_rows)


class QueryFeatures(tf.keras.layers.Layer):
    """Raw query features -> the query tower's inputs, all numeric.

    The string lookups of the query: they run in the tf.data pipeline and in the serving
    graph, never in the (XLA-compiled) training step.

    Inputs (a dict):
      user_id: string [batch]; "" or an unseen id for a new user.
      history: string [batch, history_length] of item ids, most recent last, "" padded.
      context: the context text's vector [batch, hidden] (or its tokens); passed on.
    Outputs (a dict):
      user_index: int64 [batch]; "" and unseen ids are OOV_INDEX.
      history_index: int64 [batch, history_length], rows of the item id embedding
        (MASK_INDEX: padding, OOV_INDEX: an item without an id embedding).
      history_text_index: int64 [batch, history_length], rows of the history text table.
      context: as given.
    """

    def __init__(self, user_vocabulary: Sequence[str], item_vocabulary: Sequence[str],
                 catalogue_ids: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.user_lookup = string_lookup(user_vocabulary)
        self.item_lookup = string_lookup(item_vocabulary)
        self.catalogue_lookup = string_lookup(catalogue_ids)

    def call(self, features):
        user = self.user_lookup(features["user_id"])
        return {
            # A user id that is "" (no id) is the same as an unknown one.
            "user_index": tf.where(user == MASK_INDEX, tf.cast(OOV_INDEX, user.dtype), user),
            "history_index": self.item_lookup(features["history"]),
            "history_text_index": self.catalogue_lookup(features["history"]),
            "context": features["context"]}


class QueryTower(tf.keras.Model):
    """QueryFeatures' outputs -> query embeddings float32 [batch, embedding_dim],
    L2-normalized.

    `preprocess` (a QueryFeatures) turns raw features into this tower's inputs; the tower
    keeps it so that whoever holds the tower (evaluation, exports) applies the same lookups.
    History items are pooled from the shared item id embedding (items seen in training) and
    the text embeddings of the whole catalogue (`catalogue_text_table`, one row per
    catalogue item, so an item that never trained still brings its text).
    """

    def __init__(self, preprocess: QueryFeatures, users: int, item_id_embedding,
                 catalogue_text_table: np.ndarray, embedding_dim: int, hidden_dim: int,
                 id_embedding_dim: int, user_id_dropout: float, history_dropout: float,
                 dropout: float, context_dropout: float = 0.0, text_encoder=None,
                 head_dtype: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.preprocess = preprocess
        self.user_embedding = tf.keras.layers.Embedding(users + 2, id_embedding_dim)
        self.item_id_embedding = item_id_embedding
        padding = np.zeros([2, catalogue_text_table.shape[1]], np.float32)  # "" and unknown
        self.catalogue_text_table = tf.constant(
            np.concatenate([padding, catalogue_text_table]), tf.float32)
        self.context = TextVector(text_encoder)
        # A user's context sentences are nearly unique to them: without this noise the
        # tower memorizes users through their context and generalizes worse to new ones.
        self.context_dropout = tf.keras.layers.Dropout(context_dropout)
        self.user_id_dropout = user_id_dropout
        self.history_dropout = history_dropout
        self.head = mlp(hidden_dim, embedding_dim, dropout, "query_head", dtype=head_dtype)

    def call(self, inputs, training=False):
        user = drop_to_oov(inputs["user_index"], self.user_id_dropout, training)

        history = inputs["history_index"]
        present = tf.cast(history != MASK_INDEX, tf.float32)
        if training and self.history_dropout > 0:
            keep = tf.random.uniform([tf.shape(history)[0], 1]) >= self.history_dropout
            present *= tf.cast(keep, tf.float32)
        count = tf.reduce_sum(present, axis=1, keepdims=True)
        weights = present / tf.maximum(count, 1.0)
        history_ids = tf.einsum("bh,bhd->bd", weights, self.item_id_embedding(history))
        history_text = tf.einsum("bh,bhd->bd", weights, tf.gather(
            self.catalogue_text_table, inputs["history_text_index"]))

        x = tf.concat([
            self.user_embedding(user), history_ids, history_text,
            self.context_dropout(self.context(inputs["context"], training=training),
                                 training=training),
            tf.math.log1p(count)], axis=1)
        return unit_rows(self.head(x, training=training))
