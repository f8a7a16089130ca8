"""The query tower: who asks (user id, optional), what they did (history), what they say."""
from __future__ import annotations

from typing import Sequence

import numpy as np

import towers  # noqa: F401
import tensorflow as tf

from towers.features import (MASK_INDEX, OOV_INDEX, TextVector, drop_to_oov, mlp,
                             string_lookup)


class QueryTower(tf.keras.Model):
    """Query features -> query embeddings [batch, embedding_dim], L2-normalized.

    Inputs (a dict):
      user_id: string [batch]; "" or an unseen id for a new user.
      history: string [batch, history_length] of item ids, most recent last, "" padded.
      context: the context text's vector [batch, hidden] (or its tokens when fine-tuning).

    History items are pooled from the shared item id embedding (items seen in training) and
    the text embeddings of the whole catalogue (`catalogue_text_table`, one row per
    `catalogue_ids`, so an item that never trained still brings its text).
    """

    def __init__(self, user_vocabulary: Sequence[str], item_lookup, item_id_embedding,
                 catalogue_ids: Sequence[str], catalogue_text_table: np.ndarray,
                 embedding_dim: int, hidden_dim: int,
                 id_embedding_dim: int, user_id_dropout: float, history_dropout: float,
                 dropout: float, context_dropout: float = 0.0, text_encoder=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.user_lookup = string_lookup(user_vocabulary)
        self.user_embedding = tf.keras.layers.Embedding(
            len(user_vocabulary) + 2, id_embedding_dim)
        self.item_lookup = item_lookup
        self.item_id_embedding = item_id_embedding
        self.catalogue_lookup = string_lookup(catalogue_ids)
        padding = np.zeros([2, catalogue_text_table.shape[1]], np.float32)  # "" and unknown
        self.catalogue_text_table = tf.constant(
            np.concatenate([padding, catalogue_text_table]), tf.float32)
        self.context = TextVector(text_encoder)
        # A user's context sentences are nearly unique to them: without this noise the
        # tower memorizes users through their context and generalizes worse to new ones.
        self.context_dropout = tf.keras.layers.Dropout(context_dropout)
        self.user_id_dropout = user_id_dropout
        self.history_dropout = history_dropout
        self.head = mlp(hidden_dim, embedding_dim, dropout, "query_head")

    def call(self, features, training=False):
        user = drop_to_oov(self.user_lookup(features["user_id"]), self.user_id_dropout,
                           training)
        # A user id that is "" (no id) is the same as an unknown one.
        user = tf.where(user == MASK_INDEX, tf.cast(OOV_INDEX, user.dtype), user)

        history = self.item_lookup(features["history"])
        present = tf.cast(history != MASK_INDEX, tf.float32)
        if training and self.history_dropout > 0:
            keep = tf.random.uniform([tf.shape(history)[0], 1]) >= self.history_dropout
            present *= tf.cast(keep, tf.float32)
        count = tf.reduce_sum(present, axis=1, keepdims=True)
        weights = present / tf.maximum(count, 1.0)
        history_ids = tf.einsum("bh,bhd->bd", weights, self.item_id_embedding(history))
        history_text = tf.einsum("bh,bhd->bd", weights, tf.gather(
            self.catalogue_text_table, self.catalogue_lookup(features["history"])))

        x = tf.concat([
            self.user_embedding(user), history_ids, history_text,
            self.context_dropout(self.context(features["context"], training=training),
                                 training=training),
            tf.math.log1p(count)], axis=1)
        return tf.math.l2_normalize(self.head(x, training=training), axis=1)
