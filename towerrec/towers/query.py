"""The query tower: who asks (user id, optional), what they did (history), what they say."""
from __future__ import annotations

from typing import Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.features import (
    MASK_INDEX,
    OOV_INDEX,
    TEXT_TABLE_DTYPE,
    TextVector,
    drop_to_oov,
    host_variable,
    mlp,
    string_lookup,
    unit_rows,
    weighted_mean,
)
from towerrec.towers.sequence import CausalHistoryEncoder, last_position, pack_right

import numpy as np
import pandas as pd
import tensorflow as tf


class QueryFeatures(tf.keras.layers.Layer):
    """Raw query features -> the query tower's inputs, all numeric.

    The lookups of the query: they run in the tf.data pipeline and in the serving graph,
    never in the (XLA-compiled) training step, and their catalogue-sized tables are host
    variables that the tower's checkpoint does not hold (they follow today's catalogue).

    Inputs (a dict):
      user_id: string [batch]; "" or an unseen id for a new user.
      history_rows: int [batch, history_length], catalogue rows of the history, most recent
        last, NO_ROW padded (a row beyond the table, from a newer catalogue, is unknown).
      context: the context text's vector [batch, hidden] (or its tokens); passed on.
    Outputs (a dict):
      user_index: int64 [batch]; "" and unseen ids are OOV_INDEX.
      history_index: int64 [batch, history_length], rows of the item id embedding
        (MASK_INDEX: padding, OOV_INDEX: an item without an id embedding).
      history_text: float32 [batch, history_length, hidden], the items' text embeddings
        (zeros for padding).
      context: as given.
    """

    def __init__(self, user_vocabulary, item_index_of_row: np.ndarray,
                 catalogue_text: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.user_lookup = string_lookup(user_vocabulary)
        # Row 0 is NO_ROW's: gathered at row + 1.
        self.item_index_of_row = host_variable(
            np.concatenate([[MASK_INDEX], np.asarray(item_index_of_row, np.int64)]))
        table = np.zeros([len(catalogue_text) + 1, catalogue_text.shape[1]],
                         TEXT_TABLE_DTYPE.as_numpy_dtype)
        table[1:] = catalogue_text  # no float32 copy of a catalogue-sized table
        self.catalogue_text = host_variable(table)

    def call(self, features):
        user = self.user_lookup(features["user_id"])
        rows = tf.cast(features["history_rows"], tf.int64) + 1
        rows = tf.where((rows > 0) & (rows < tf.shape(self.item_index_of_row, tf.int64)[0]),
                        rows, 0)
        return {
            # A user id that is "" (no id) is the same as an unknown one.
            "user_index": tf.where(user == MASK_INDEX, tf.cast(OOV_INDEX, user.dtype), user),
            "history_index": tf.gather(self.item_index_of_row, rows),
            "history_text": tf.cast(tf.gather(self.catalogue_text, rows), tf.float32),
            "context": features["context"]}


def item_index_of_row(item_vocabulary, catalogue_ids) -> np.ndarray:
    """Per catalogue row, the item id embedding's row of that item (OOV_INDEX: none)."""
    index = pd.Index(list(item_vocabulary)).get_indexer(list(catalogue_ids))
    return np.where(index >= 0, index + 2, OOV_INDEX).astype(np.int64)


class QueryTower(tf.keras.Model):
    """QueryFeatures' outputs -> query embeddings float32 [batch, embedding_dim],
    L2-normalized.

    `preprocess` (a QueryFeatures) turns raw features into this tower's inputs; the tower
    keeps it (untracked: its tables are not weights) so that whoever holds the tower
    (evaluation, exports) applies the same lookups. A history item is its row of the shared
    item id embedding (items seen in training) and its text embedding (every catalogue item
    has one, so an item that never trained still brings its text). The history is their
    mean, or with `history_encoder` (a CausalHistoryEncoder) the encoder's output at the
    most recent position, which reads the items in order.
    """

    def __init__(self, preprocess: QueryFeatures, users: int, item_id_embedding,
                 embedding_dim: int, hidden_dim: int,
                 id_embedding_dim: int, user_id_dropout: float, history_dropout: float,
                 dropout: float, context_dropout: float = 0.0, text_encoder=None,
                 head_dtype: Optional[str] = None,
                 history_encoder: Optional[CausalHistoryEncoder] = None, **kwargs):
        super().__init__(**kwargs)
        # Not tracked: the checkpoint holds weights, and its catalogue-sized tables follow
        # the catalogue (they are rebuilt from it; the exports track them themselves).
        object.__setattr__(self, "preprocess", preprocess)
        self.user_embedding = tf.keras.layers.Embedding(users + 2, id_embedding_dim)
        self.item_id_embedding = item_id_embedding
        self.context = TextVector(text_encoder)
        # A user's context sentences are nearly unique to them: without this noise the
        # tower memorizes users through their context and generalizes worse to new ones.
        self.context_dropout = tf.keras.layers.Dropout(context_dropout)
        self.user_id_dropout = user_id_dropout
        self.history_dropout = history_dropout
        self.history_encoder = history_encoder
        self.head = mlp(hidden_dim, embedding_dim, dropout, "query_head", dtype=head_dtype)

    def call(self, inputs, training=False):
        user = drop_to_oov(inputs["user_index"], self.user_id_dropout, training)

        history = inputs["history_index"]
        present = tf.cast(history != MASK_INDEX, tf.float32)
        if training and self.history_dropout > 0:
            keep = tf.random.uniform([tf.shape(history)[0], 1]) >= self.history_dropout
            present *= tf.cast(keep, tf.float32)
        count = tf.reduce_sum(present, axis=1, keepdims=True)
        history_ids = self.item_id_embedding(history)
        if self.history_encoder is None:
            weights = present / tf.maximum(count, 1.0)
            history = [weighted_mean(weights, history_ids),
                       weighted_mean(weights, inputs["history_text"])]
        else:
            items, present = pack_right(
                tf.concat([history_ids, inputs["history_text"]], axis=2), present)
            history = [last_position(
                self.history_encoder(items, present, training=training), present)]

        x = tf.concat([
            self.user_embedding(user), *history,
            self.context_dropout(self.context(inputs["context"], training=training),
                                 training=training),
            tf.math.log1p(count)], axis=1)
        return unit_rows(self.head(x, training=training))
