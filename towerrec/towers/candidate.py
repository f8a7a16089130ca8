"""The candidate tower: an item from its text and attributes, and its id when known."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.features import (
    MultiHot,
    Standardize,
    TextVector,
    Vocabulary,
    drop_to_oov,
    mlp,
    string_lookup,
    unit_rows,
)

import tensorflow as tf


class CandidateFeatures(tf.keras.layers.Layer):
    """Raw item features -> the candidate tower's inputs, all numeric.

    The string ops of an item (id lookup, splitting and looking up categories): they run
    in the tf.data pipeline and in the serving graph, never in the training step.

    Inputs (a dict):
      item_id: string [batch]; unseen ids (new items) look up to OOV_INDEX.
      item_text: the item text's vector [batch, hidden] (or its tokens); passed on.
      <categorical column>: string [batch], values joined by "|".
      <numeric column>: float [batch], NaN when unknown.
    Outputs (a dict):
      item_index: int64 [batch], rows of the item id embedding.
      item_text: as given.
      attributes: float32 [batch, n]: each categorical column multi-hot, then each numeric
        column standardized with its missing flag (columns by name within each kind).
    """

    def __init__(self, item_vocabulary: Vocabulary,
                 categorical_vocabularies: Mapping[str, Sequence[str]],
                 numeric_stats: Dict[str, Tuple[float, float]], **kwargs):
        super().__init__(**kwargs)
        self.item_lookup = string_lookup(item_vocabulary)
        self.categorical = {name: MultiHot(vocab, name=f"multi_hot_{name}")
                            for name, vocab in categorical_vocabularies.items()}
        self.numeric = {name: Standardize(*stats, name=f"standardize_{name}")
                        for name, stats in numeric_stats.items()}

    def call(self, features):
        ids = features["item_id"]
        return {"item_index": self.item_lookup(ids), "item_text": features["item_text"],
                "attributes": self.attributes(features, tf.shape(ids)[0])}

    def attributes(self, features, batch_size) -> tf.Tensor:
        """The item attribute columns of `features` -> float32 [batch, n], as `call` gives
        them (also the ranker's item attribute table)."""
        parts = [layer(features[name]) for name, layer in sorted(self.categorical.items())]
        parts += [layer(features[name]) for name, layer in sorted(self.numeric.items())]
        return (tf.concat(parts, axis=1) if parts
                else tf.zeros([batch_size, 0], tf.float32))


class CandidateTower(tf.keras.Model):
    """CandidateFeatures' outputs -> candidate embeddings float32 [batch, embedding_dim],
    L2-normalized.

    `preprocess` (a CandidateFeatures) turns raw features into this tower's inputs; the
    tower keeps it so that whoever holds the tower applies the same lookups. Unseen ids (new
    items) use the learned unknown-item row, which training also uses (id dropout), so text
    and attributes carry a new item.
    """

    def __init__(self, preprocess: CandidateFeatures, item_id_embedding, embedding_dim: int,
                 hidden_dim: int, item_id_dropout: float, dropout: float,
                 text_encoder=None, head_dtype: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.preprocess = preprocess
        self.item_id_embedding = item_id_embedding
        self.item_id_dropout = item_id_dropout
        self.text = TextVector(text_encoder)
        self.head = mlp(hidden_dim, embedding_dim, dropout, "candidate_head",
                        dtype=head_dtype)

    def call(self, inputs, training=False):
        item = drop_to_oov(inputs["item_index"], self.item_id_dropout, training)
        x = tf.concat([self.item_id_embedding(item),
                       self.text(inputs["item_text"], training=training),
                       inputs["attributes"]], axis=1)
        return unit_rows(self.head(x, training=training))
