"""Full-catalogue ranking metrics: Recall@K and NDCG@K, per-user mean.

Every model (towerrec and the baselines) is judged by the same function: it hands over a
score matrix [users, catalogue]; items each user saw in training are not ranked.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from towerrec.pipelines.features import Queries

METRIC_NOTE = ("Full-catalogue ranking, each user's training items excluded; per-user mean. "
               "Recall@K = hits in top K / number of held-out items of the user.")


def top_k(scores: np.ndarray, exclude: List[np.ndarray], k: int) -> np.ndarray:
    """[users, items] scores -> [users, k] item rows, best first, excluded rows skipped."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(top: np.ndarray, targets: List[np.ndarray],
                    ks: Sequence[int] = (10, 100)) -> Dict[str, float]:
    """Recall@k for every k, NDCG@10; per-user mean over users with at least one target."""
    results = {f"recall_at_{k}": [] for k in ks}
    results["ndcg_at_10"] = []
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    for row, target in enumerate(targets):
        if len(target) == 0:
            continue
        hits = np.isin(top[row], target)
        for k in ks:
            results[f"recall_at_{k}"].append(hits[:k].sum() / len(target))
        ideal = discounts[:min(10, len(target))].sum()
        results["ndcg_at_10"].append((hits[:10] * discounts[:10]).sum() / ideal)
    return {name: float(np.mean(values)) for name, values in results.items()}


def evaluate_scores(scores: np.ndarray, queries: Queries,
                    ks: Sequence[int] = (10, 100)) -> Dict[str, float]:
    metrics = ranking_metrics(top_k(scores, queries.exclude, max(ks)), queries.targets, ks)
    metrics["users"] = len(queries)
    return metrics


def markdown_table(rows: Dict[str, Dict[str, Dict[str, float]]],
                   columns: Sequence[str] = ("recall_at_10", "recall_at_100",
                                             "ndcg_at_10")) -> str:
    """{model: {split: metrics}} -> a markdown table, one row per model and split."""
    header = "| model | split | users | " + " | ".join(
        c.replace("_at_", "@").replace("recall", "Recall").replace("ndcg", "NDCG")
        for c in columns) + " |"
    lines = [header, "|" + "---|" * (3 + len(columns))]
    for model, splits in rows.items():
        for split, metrics in splits.items():
            values = " | ".join(f"{metrics[c]:.4f}" for c in columns)
            lines.append(f"| {model} | {split} | {metrics.get('users', '')} | {values} |")
    return "\n".join(lines)


def _embed(tower, features, text_inputs, batch_size: int = 1024) -> np.ndarray:
    from towerrec.pipelines.features import tf_dataset

    batches = tf_dataset(features, text_inputs, batch_size, tower.preprocess)
    return np.concatenate([tower(batch, training=False).numpy() for batch in batches])


def candidate_embeddings(run) -> np.ndarray:
    """[catalogue, embedding_dim] from the candidate tower, in catalogue order."""
    return _embed(run.model.candidate_tower, run.catalogue, run.text_inputs)


def query_embeddings(run, queries: Queries) -> np.ndarray:
    features = {"user_id": queries.user_id, "history": queries.history,
                "context_text": queries.context_text}
    return _embed(run.model.query_tower, features, run.text_inputs)


def split_queries(run, split: str) -> Queries:
    from towerrec.pipelines.features import evaluation_queries

    return evaluation_queries(
        run.splits[split], run.splits["train"], run.catalogue["item_id"],
        run.config.towers.history_length, known_users=(split != "cold_user"))


def training_queries(run, users: int) -> Queries:
    """Queries of the first `users` training users, their training items as history: a
    sample every run has, whatever its held-out splits are called."""
    from towerrec.pipelines.features import evaluation_queries

    train = run.splits["train"]
    chosen = train[train["user_id"].isin(sorted(train["user_id"].unique())[:users])]
    return evaluation_queries(chosen, train, run.catalogue["item_id"],
                              run.config.towers.history_length, known_users=True)


def evaluate_split(run, split: str, candidates: np.ndarray = None) -> Dict[str, float]:
    queries = split_queries(run, split)
    candidates = candidate_embeddings(run) if candidates is None else candidates
    scores = query_embeddings(run, queries) @ candidates.T
    return evaluate_scores(scores, queries, run.config.evaluation.ks)


def evaluate_run(run) -> Dict[str, Dict[str, float]]:
    """{split: metrics} for every held-out split of the run."""
    candidates = candidate_embeddings(run)
    return {split: evaluate_split(run, split, candidates)
            for split in run.splits if split != "train"}
