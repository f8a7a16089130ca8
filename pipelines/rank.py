"""`towerrec train-ranker`: a ranker trained on what retrieval actually returns.

Retrieval has seen every training interaction, so its lists for training users would put
their training items on top for free. The ranker's training lists therefore come from a
second retrieval model trained on each user's earlier 80% of training interactions; the
later 20% are the positives the ranker learns to lift within those lists. At serving (and
in evaluation) the ranker rescores the full retrieval model's top-K.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Dict

import numpy as np

import towers  # noqa: F401
import tensorflow as tf

from pipelines.config import Config
from pipelines.evaluate import (candidate_embeddings, query_embeddings, ranking_metrics,
                                split_queries, top_k)
from pipelines.features import Queries, evaluation_queries
from pipelines.splits import hold_out_last, save_splits
from pipelines.train import Run, load_run, train
from towers.features import MULTI_VALUE_SEPARATOR
from towers.ranking import Ranker

RETRIEVED = 100
RANKER_DIR = "ranker"


@dataclasses.dataclass
class CandidateLists:
    """Each query's retrieved top-K: catalogue rows [n, K], features [n, K, F], labels."""
    rows: np.ndarray
    features: np.ndarray
    labels: np.ndarray


def item_attributes(run: Run) -> np.ndarray:
    """[catalogue, attributes]: categorical multi-hots and standardized numerics, with the
    vocabularies and statistics the towers were trained with."""
    parts = []
    for column, vocabulary in run.vocabularies.categorical.items():
        position = {v: i for i, v in enumerate(vocabulary)}
        hot = np.zeros([len(run.catalogue[column]), len(vocabulary)], np.float32)
        for row, cell in enumerate(run.catalogue[column]):
            for value in str(cell).split(MULTI_VALUE_SEPARATOR):
                if value in position:
                    hot[row, position[value]] = 1.0
        parts.append(hot)
    for column, (mean, std) in run.vocabularies.numeric.items():
        values = run.catalogue[column].astype(np.float64)
        parts.append(np.nan_to_num((values - mean) / std)[:, None].astype(np.float32))
    if not parts:
        return np.zeros([len(run.catalogue["item_id"]), 0], np.float32)
    return np.concatenate(parts, axis=1)


def candidate_lists(run: Run, queries: Queries, k: int = RETRIEVED) -> CandidateLists:
    """Retrieval's top-k per query, with the ranker's features for every candidate.

    Features: retrieval score and rank; the item's attributes, and their overlap with the
    history's; the text similarity of the item to the history items (frozen encoder); the
    history's length. Nothing tied to one retrieval model's embedding space (the ranker is
    trained on one retrieval model's lists and serves another's), and no popularity count
    (a new item has none, and the ranker would learn to bury new items).
    """
    candidates = candidate_embeddings(run)
    query = query_embeddings(run, queries)
    scores = query @ candidates.T
    rows = top_k(scores, queries.exclude, k)
    n = len(rows)
    row_of = {item: r for r, item in enumerate(run.catalogue["item_id"])}
    attributes = item_attributes(run)
    texts = run.text_inputs.embed(run.catalogue["item_text"])

    history_rows = [[row_of[i] for i in h if i] for h in queries.history]
    history_attributes = np.stack([attributes[r].mean(0) if r else
                                   np.zeros(attributes.shape[1], np.float32)
                                   for r in history_rows])
    history_text = np.stack([texts[r].mean(0) if r else np.zeros(texts.shape[1], np.float32)
                             for r in history_rows])
    candidate_attributes = attributes[rows]                                  # [n, k, a]
    features = np.concatenate([
        np.take_along_axis(scores, rows, axis=1)[:, :, None],
        np.broadcast_to(np.arange(k, dtype=np.float32) / k, (n, k))[:, :, None],
        candidate_attributes,
        candidate_attributes * history_attributes[:, None, :],
        np.einsum("nkd,nd->nk", texts[rows], history_text)[:, :, None],
        np.broadcast_to(np.log1p([len(r) for r in history_rows])[:, None, None], (n, k, 1)),
    ], axis=2).astype(np.float32)
    labels = np.stack([np.isin(r, t) for r, t in zip(rows, queries.targets)]).astype(
        np.float32)
    return CandidateLists(rows, features, labels)


def rerank(ranker: Ranker, lists: CandidateLists) -> np.ndarray:
    """Catalogue rows [n, K] in the ranker's order."""
    scores = ranker(tf.constant(lists.features), training=False).numpy()
    return np.take_along_axis(lists.rows, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def train_ranker(config: Config, epochs: int = 15, verbose: int = 2) -> Dict:
    """Trains the ranker, saves it, and returns two-stage metrics per split."""
    run = load_run(config)
    directory = config.run_path / RANKER_DIR
    retrieval_dir = directory / "retrieval"
    shutil.rmtree(retrieval_dir, ignore_errors=True)
    earlier, later = hold_out_last(run.splits["train"], config.split.warm_test_fraction)
    save_splits({"train": earlier, "later": later}, retrieval_dir / "splits")
    early_config = dataclasses.replace(config, run_dir=str(retrieval_dir))
    print(f"ranker lists: retrieval trained on {len(earlier)} earlier interactions")
    early = train(early_config, encoder_dir=config.run_path / "encoder", verbose=0)
    queries = evaluation_queries(later, earlier, early.catalogue["item_id"],
                                 config.towers.history_length, known_users=True)
    lists = candidate_lists(early, queries)
    has_positive = lists.labels.sum(axis=1) > 0
    features, labels = lists.features[has_positive], lists.labels[has_positive]
    print(f"ranker training lists: {len(features)} queries x {RETRIEVED} candidates, "
          f"{features.shape[2]} features, {labels.sum():.0f} positives")

    tf.keras.utils.set_random_seed(config.training.seed)
    ranker = Ranker(features.shape[2])
    ranker.normalize.adapt(features.reshape(-1, features.shape[2]))
    ranker.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    ranker.fit(tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(
        len(features), seed=config.training.seed).batch(32), epochs=epochs, verbose=verbose)
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(ranker=ranker).write(str(directory / "weights"))
    (directory / "ranker.json").write_text(json.dumps({"num_features": features.shape[2],
                                                       "retrieved": RETRIEVED}))
    return evaluate_two_stages(run, ranker)


def evaluate_two_stages(run: Run, ranker: Ranker) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{"retrieval": {split: metrics}, "retrieval+rerank": {split: metrics}} at 10."""
    results = {"retrieval": {}, "retrieval+rerank": {}}
    for split in run.splits:
        if split == "train":
            continue
        queries = split_queries(run, split)
        lists = candidate_lists(run, queries)
        for name, rows in (("retrieval", lists.rows), ("retrieval+rerank", rerank(ranker, lists))):
            metrics = ranking_metrics(rows[:, :10], queries.targets, ks=(10,))
            metrics["users"] = len(queries)
            results[name][split] = metrics
    return results
