"""The ranker's per-candidate features, computed in TensorFlow from per-item tables.

One implementation serves training (on numpy lists) and the exported `ranker` and
`recommender` graphs, so what the ranker learned on is exactly what it is served.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.features import NO_ROW, TEXT_TABLE_DTYPE, host_variable, weighted_mean

import numpy as np
import tensorflow as tf

NUM_FEATURES = 13


@dataclasses.dataclass
class ItemTables:
    """What the ranker knows of every catalogue item, one row per item (catalogue order).

    attributes:  [items, a] float, multi-hot categoricals and standardized numerics.
    text:        [items, t] float, the frozen encoder's L2-normalized text embedding, or None
                 when RankingFeatures is given the query tower's table of the same.
    popularity:  [items] float, log(1 + interactions) in the data the tables come from.
    recent_popularity: [items] float, the same over the latest part of that data.
    neighbours:  [items, m] int, the items most often seen by the same users (NO_ROW pad).
    neighbour_weights: [items, m] float, their cosine co-occurrence.
    A new item (no interactions) has zero popularity and no neighbours, and is nobody's
    neighbour: the ranker learns what that means from items masked the same way.
    """
    attributes: np.ndarray
    text: Optional[np.ndarray]
    popularity: np.ndarray
    recent_popularity: np.ndarray
    neighbours: np.ndarray
    neighbour_weights: np.ndarray


class RankingFeatures(tf.Module):
    """(history rows [n, h], candidate rows [n, k], retrieval scores [n, k]) ->
    features [n, k, NUM_FEATURES].

    Per candidate: its retrieval score (z-scored within the list, and its gap to the list's
    best: raw scores differ between retrieval models), its rank; its text similarity to the
    history (mean and max) and its attributes' overlap with the history's; co-occurrence
    with the history (mean over it, max over the last 3 items); its popularity (all and
    recent) and whether it is new; the history's length. Scalars only: with raw attribute
    vectors as features the ranker overfits its ~1k training lists.
    """

    RECENT = 3

    def __init__(self, tables: ItemTables, text: Optional[tf.Variable] = None):
        """`text`: the catalogue's text table as the query tower's features hold it
        ([items + 1, t], row 0 the padding), used instead of a copy of `tables.text`: a
        served model then holds one copy of the largest table."""
        super().__init__()

        def table(values, dtype=tf.float32, pad=0):
            """A leading padding row, so that NO_ROW (-1) + 1 gathers it."""
            values = np.asarray(values)
            padding = np.full((1,) + values.shape[1:], pad, values.dtype)
            return host_variable(np.concatenate([padding, values]).astype(dtype.as_numpy_dtype))

        self.attributes = table(tables.attributes)
        self.text = text if text is not None else table(tables.text, TEXT_TABLE_DTYPE)
        self.popularity = table(tables.popularity)
        self.recent_popularity = table(tables.recent_popularity)
        self.neighbours = table(tables.neighbours, tf.int32, pad=NO_ROW)
        self.neighbour_weights = table(tables.neighbour_weights)

    @staticmethod
    def _gather(padded, rows):
        return tf.gather(padded, rows + 1)

    def is_new(self, candidate_rows):
        """[n, k] bool: items without any interaction in the tables' data."""
        return self._gather(self.popularity, tf.cast(candidate_rows, tf.int64)) <= 0

    def __call__(self, history_rows, candidate_rows, retrieval_scores):
        history_rows = tf.cast(history_rows, tf.int64)
        candidate_rows = tf.cast(candidate_rows, tf.int64)
        scores = tf.cast(retrieval_scores, tf.float32)
        k = tf.shape(candidate_rows)[1]
        present = tf.cast(history_rows >= 0, tf.float32)                   # [n, h]
        count = tf.reduce_sum(present, axis=1, keepdims=True)               # [n, 1]
        mean_weights = present / tf.maximum(count, 1.0)

        mean, variance = tf.nn.moments(scores, axes=[1], keepdims=True)
        z_score = (scores - mean) / tf.sqrt(variance + 1e-6)
        gap = scores - tf.reduce_max(scores, axis=1, keepdims=True)
        rank = tf.broadcast_to(tf.range(k, dtype=tf.float32)[None, :] / tf.cast(k, tf.float32),
                               tf.shape(scores))

        attributes = self._gather(self.attributes, candidate_rows)         # [n, k, a]
        history_attributes = weighted_mean(mean_weights,
                                           self._gather(self.attributes, history_rows))
        text = tf.cast(self._gather(self.text, candidate_rows), tf.float32)  # [n, k, t]
        history_text = tf.cast(self._gather(self.text, history_rows), tf.float32)  # [n, h, t]
        similarity = tf.matmul(text, history_text, transpose_b=True)       # [n, k, h]
        text_mean = tf.reduce_sum(similarity * mean_weights[:, None, :], axis=2)
        text_max = tf.reduce_max(similarity + (present[:, None, :] - 1.0) * 2.0, axis=2)
        text_max = tf.where(count > 0, text_max, 0.0)

        # co-occurrence[n, k, h]: weight of candidate k among history item h's neighbours.
        neighbours = tf.cast(self._gather(self.neighbours, history_rows), tf.int64)  # [n, h, m]
        weights = self._gather(self.neighbour_weights, history_rows)        # [n, h, m]
        match = tf.cast(candidate_rows[:, :, None, None] == neighbours[:, None, :, :],
                        tf.float32)                                          # [n, k, h, m]
        cooccurrence = tf.reduce_sum(match * weights[:, None, :, :], axis=3)  # [n, k, h]
        cooc_mean = tf.reduce_sum(cooccurrence * mean_weights[:, None, :], axis=2)
        recent = tf.cast(tf.range(tf.shape(history_rows)[1]) >=
                         tf.shape(history_rows)[1] - self.RECENT, tf.float32)
        cooc_recent = tf.reduce_max(cooccurrence * recent[None, None, :], axis=2)

        popularity = self._gather(self.popularity, candidate_rows)
        recent_popularity = self._gather(self.recent_popularity, candidate_rows)
        is_new = tf.cast(popularity <= 0, tf.float32)
        history_length = tf.broadcast_to(tf.math.log1p(count), tf.shape(scores))

        attribute_overlap = tf.reduce_sum(attributes * history_attributes[:, None, :], axis=2)
        has_history = tf.cast(count > 0, tf.float32) * tf.ones_like(scores)
        return tf.stack([z_score, gap, rank, text_mean, text_max, attribute_overlap,
                         cooc_mean, cooc_recent, popularity, recent_popularity, is_new,
                         history_length, has_history], axis=2)
