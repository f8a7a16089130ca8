"""The two-tower retrieval model: in-batch softmax with temperature, log-Q correction and
removal of accidental hits (tfrs.tasks.Retrieval)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.candidate import CandidateFeatures, CandidateTower
from towerrec.towers.features import Vocabulary, write_vocabulary
from towerrec.towers.negatives import global_batch
from towerrec.towers.query import QueryFeatures, QueryTower, item_index_of_row
from towerrec.towers.sequence import CausalHistoryEncoder

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs


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

    `preprocess` turns raw examples into the numeric features the training step reads (in
    tf.data): the towers' inputs and `item_probability` [batch] (the item's share of
    training interactions), used for log-Q correction when `logq_correction` is set.
    Under a strategy with several replicas, `negatives` says what a replica's queries are
    scored against: "global", the candidates of the whole global batch (all-gathered with
    their sampling probabilities and ids, towerrec.towers.negatives), or "replica", its own
    slice only. The loss is the sum over a replica's queries; the replicas' gradients are
    summed, so one step over R replicas with global negatives is one step of one device over
    the global batch.
    """

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower,
                 temperature: float, logq_correction: bool, remove_accidental_hits: bool,
                 negatives: str = "global"):
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits
        self.negatives = negatives
        self.task = tfrs.tasks.Retrieval(
            temperature=temperature,
            remove_accidental_hits=remove_accidental_hits,
            metrics=None)
        self.xla = False  # set by `compile`

    def preprocess(self, features):
        """Raw training examples -> what `compute_loss` reads: numbers only."""
        return {**self.query_tower.preprocess(features),
                **self.candidate_tower.preprocess(features),
                "item_probability": features["item_probability"]}

    def embed(self, features, training=False):
        """(query embeddings [batch, d], candidate embeddings [batch, d]) of a batch."""
        return (self.query_tower(features, training=training),
                self.candidate_tower(features, training=training))

    def softmax_loss(self, query_embeddings, candidate_embeddings, features):
        """The in-batch softmax of a replica's queries [batch, d] over its candidates
        [batch, d], or with global negatives over the global batch's; summed."""
        candidates = (
            candidate_embeddings,
            features["item_probability"] if self.logq_correction else None,
            # Indices, not id strings (XLA has no string ops): every training item has an
            # index of its own, so equal indices are equal ids.
            features["item_index"] if self.remove_accidental_hits else None)
        if self.negatives == "global":
            candidates = global_batch(candidates)
        candidate_embeddings, probability, ids = candidates
        return self.task(query_embeddings, candidate_embeddings,
                         candidate_sampling_probability=probability, candidate_ids=ids,
                         compute_metrics=False)

    def compute_loss(self, features, training=False):
        return self.softmax_loss(*self.embed(features, training=training), features)

    def compile(self, optimizer, xla: bool = False, **kwargs):
        """`xla`: each replica compiles its loss (towers and softmax, forward and
        gradients; the towers only when the softmax gathers other replicas' negatives)
        with XLA. Not Keras' `jit_compile`: that traces one step for every replica, which
        XLA cannot run on several devices (keras-team/tf-keras#194), and the update's sum
        over replicas cannot be compiled inside a replica."""
        super().compile(optimizer=optimizer, **kwargs)
        self.xla = xla

    def train_step(self, features):
        """tfrs's training step, with the loss compiled as `compile` says."""
        loss, regularization_loss, gradients = self.loss_and_gradients(features)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return {"loss": loss, "regularization_loss": regularization_loss,
                "total_loss": loss + regularization_loss}

    def loss_and_gradients(self, features):
        """(loss, regularization loss, gradients of their sum) of one replica's batch; with
        mixed_float16's LossScaleOptimizer, taken through the scaled loss, so that they do
        not underflow."""
        scaled = isinstance(self.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            loss = self._compiled_loss()(features)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(x) for x in self.losses])
            total_loss = loss + regularization_loss
            if scaled:
                total_loss = self.optimizer.get_scaled_loss(total_loss)
        gradients = tape.gradient(total_loss, self.trainable_variables)
        if scaled:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        return loss, regularization_loss, gradients

    def _gathers_negatives(self) -> bool:
        """Whether the softmax reads other replicas' candidates (an all-gather)."""
        context = tf.distribute.get_replica_context()
        return (self.negatives == "global" and context is not None
                and context.num_replicas_in_sync > 1)

    def _compiled_loss(self):
        """features -> a replica's training loss, XLA-compiled as `compile` says. A new
        function per call: Keras calls this once per replica while tracing, so each replica
        compiles its own, on its own device, with its own variables. With global negatives
        over several replicas, the towers only: the softmax's all-gather is a cross-replica
        step, which a function nested in a replica's step cannot hold."""
        def loss(features):
            return self.compute_loss(features, training=True)
        if not self.xla:
            return loss
        if not self._gathers_negatives():
            return tf.function(loss, jit_compile=True)
        embed = tf.function(self.embed, jit_compile=True)
        return lambda features: self.softmax_loss(*embed(features, training=True), features)


def build_two_tower(vocabularies: Vocabularies, catalogue_text: np.ndarray,
                    towers_config, training_config, encoder_path: Optional[str] = None,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    vocabulary_dir: Optional[Path] = None) -> TwoTowerModel:
    """Builds both towers around one shared item id embedding.

    `catalogue_text` [catalogue, hidden]: every catalogue item's text embedding, in the
    order of `vocabularies.catalogue_ids` (the history's text table). With `vocabulary_dir`,
    the user and item id vocabularies are written there as files, which exports carry as
    assets. The lookups are built outside `strategy`'s scope, so that their tables stay
    plain host tables for tf.data and the exports; the weights (and, with `encoder_path`,
    the encoder to fine-tune, shared by both towers) are created in it.
    """
    c, t = towers_config, training_config
    users: Vocabulary = vocabularies.user_ids
    items: Vocabulary = vocabularies.item_ids
    if vocabulary_dir is not None:
        users = write_vocabulary(vocabularies.user_ids, vocabulary_dir, "user_ids")
        items = write_vocabulary(vocabularies.item_ids, vocabulary_dir, "item_ids")
    query_features = QueryFeatures(
        users, item_index_of_row(vocabularies.item_ids, vocabularies.catalogue_ids),
        catalogue_text, name="query_features")
    candidate_features = CandidateFeatures(items, vocabularies.categorical,
                                           vocabularies.numeric, name="candidate_features")
    with (strategy or tf.distribute.get_strategy()).scope():
        text_encoder = None
        if encoder_path is not None:
            import tensorflow_hub as hub
            text_encoder = hub.KerasLayer(encoder_path, trainable=True, name="text_encoder")
        item_id_embedding = tf.keras.layers.Embedding(
            len(vocabularies.item_ids) + 2, c.id_embedding_dim, name="item_id_embedding")
        history_encoder = None
        if c.history_encoder == "attention":
            history_encoder = CausalHistoryEncoder(
                c.history_length, width=c.history_width, heads=c.history_heads,
                blocks=c.history_blocks, dropout=c.dropout, name="history_encoder")
        query_tower = QueryTower(
            query_features, len(vocabularies.user_ids), item_id_embedding,
            embedding_dim=c.embedding_dim, hidden_dim=c.hidden_dim,
            id_embedding_dim=c.id_embedding_dim, user_id_dropout=c.user_id_dropout,
            history_dropout=c.history_dropout, dropout=c.dropout,
            context_dropout=c.context_dropout, text_encoder=text_encoder,
            head_dtype=t.mixed_precision, history_encoder=history_encoder,
            name="query_tower")
        candidate_tower = CandidateTower(
            candidate_features, item_id_embedding, embedding_dim=c.embedding_dim,
            hidden_dim=c.hidden_dim, item_id_dropout=c.item_id_dropout, dropout=c.dropout,
            text_encoder=text_encoder, head_dtype=t.mixed_precision, name="candidate_tower")
        return TwoTowerModel(query_tower, candidate_tower, temperature=t.temperature,
                             logq_correction=t.logq_correction,
                             remove_accidental_hits=t.remove_accidental_hits,
                             negatives=t.negatives)
