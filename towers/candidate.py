"""The candidate tower: an item from its text and attributes, and its id when known."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import towers  # noqa: F401
import tensorflow as tf

from towers.features import MultiHot, Standardize, TextVector, drop_to_oov, mlp


class CandidateTower(tf.keras.Model):
    """Item features -> candidate embeddings [batch, embedding_dim], L2-normalized.

    Inputs (a dict):
      item_id: string [batch]; unseen ids (new items) use the learned unknown-item row,
        which training also uses (id dropout), so text and attributes carry a new item.
      item_text: the item text's vector [batch, hidden] (or its tokens when fine-tuning).
      <categorical column>: string [batch], values joined by "|".
      <numeric column>: float [batch], NaN when unknown.
    """

    def __init__(self, item_lookup, item_id_embedding,
                 categorical_vocabularies: Dict[str, Sequence[str]],
                 numeric_stats: Dict[str, Tuple[float, float]], embedding_dim: int,
                 hidden_dim: int, item_id_dropout: float, dropout: float,
                 text_encoder=None, **kwargs):
        super().__init__(**kwargs)
        self.item_lookup = item_lookup
        self.item_id_embedding = item_id_embedding
        self.item_id_dropout = item_id_dropout
        self.text = TextVector(text_encoder)
        self.categorical = {name: MultiHot(vocab, name=f"multi_hot_{name}")
                            for name, vocab in categorical_vocabularies.items()}
        self.numeric = {name: Standardize(*stats, name=f"standardize_{name}")
                        for name, stats in numeric_stats.items()}
        self.head = mlp(hidden_dim, embedding_dim, dropout, "candidate_head")

    def call(self, features, training=False):
        item = drop_to_oov(self.item_lookup(features["item_id"]), self.item_id_dropout,
                           training)
        parts = [self.item_id_embedding(item),
                 self.text(features["item_text"], training=training)]
        parts += [layer(features[name]) for name, layer in sorted(self.categorical.items())]
        parts += [layer(features[name]) for name, layer in sorted(self.numeric.items())]
        x = tf.concat(parts, axis=1)
        return tf.math.l2_normalize(self.head(x, training=training), axis=1)
