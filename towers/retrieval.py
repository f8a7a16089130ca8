"""The two-tower retrieval model: in-batch softmax with temperature, log-Q correction and
removal of accidental hits (tfrs.tasks.Retrieval)."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

import towers  # noqa: F401
import tensorflow as tf
import tensorflow_recommenders as tfrs

from towers.candidate import CandidateTower
from towers.features import string_lookup
from towers.query import QueryTower


@dataclasses.dataclass
class Vocabularies:
    """What the towers' lookups and normalizers are built from (the training data)."""
    user_ids: List[str]
    item_ids: List[str]            # items with an id embedding (seen in training)
    catalogue_ids: List[str]       # every item whose text the history table holds
    categorical: Dict[str, List[str]]
    numeric: Dict[str, Tuple[float, float]]


class TwoTowerModel(tfrs.Model):
    """query_tower(features) . candidate_tower(features) / temperature, softmax in batch.

    Features also carry `item_probability` [batch] (the item's share of training
    interactions), used for log-Q correction when `logq_correction` is set.
    """

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower,
                 temperature: float, logq_correction: bool, remove_accidental_hits: bool):
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits
        self.task = tfrs.tasks.Retrieval(
            temperature=temperature,
            remove_accidental_hits=remove_accidental_hits,
            metrics=None)

    def compute_loss(self, features, training=False):
        query_embeddings = self.query_tower(features, training=training)
        candidate_embeddings = self.candidate_tower(features, training=training)
        return self.task(
            query_embeddings, candidate_embeddings,
            candidate_sampling_probability=(
                features["item_probability"] if self.logq_correction else None),
            candidate_ids=features["item_id"] if self.remove_accidental_hits else None,
            compute_metrics=False)


def build_two_tower(vocabularies: Vocabularies, catalogue_text_table: np.ndarray,
                    towers_config, training_config,
                    text_encoder=None) -> TwoTowerModel:
    """Builds both towers around one shared item lookup and item id embedding."""
    c = towers_config
    item_lookup = string_lookup(vocabularies.item_ids)
    item_id_embedding = tf.keras.layers.Embedding(
        len(vocabularies.item_ids) + 2, c.id_embedding_dim, name="item_id_embedding")
    query_tower = QueryTower(
        vocabularies.user_ids, item_lookup, item_id_embedding, vocabularies.catalogue_ids,
        catalogue_text_table, embedding_dim=c.embedding_dim, hidden_dim=c.hidden_dim,
        id_embedding_dim=c.id_embedding_dim, user_id_dropout=c.user_id_dropout,
        history_dropout=c.history_dropout, dropout=c.dropout,
        context_dropout=c.context_dropout,
        text_encoder=text_encoder, name="query_tower")
    candidate_tower = CandidateTower(
        item_lookup, item_id_embedding, vocabularies.categorical, vocabularies.numeric,
        embedding_dim=c.embedding_dim, hidden_dim=c.hidden_dim,
        item_id_dropout=c.item_id_dropout, dropout=c.dropout, text_encoder=text_encoder,
        name="candidate_tower")
    t = training_config
    return TwoTowerModel(query_tower, candidate_tower, temperature=t.temperature,
                         logq_correction=t.logq_correction,
                         remove_accidental_hits=t.remove_accidental_hits)
