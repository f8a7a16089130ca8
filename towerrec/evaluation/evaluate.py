"""Full-catalogue ranking metrics: Recall@K and NDCG@K, per-user mean and its standard error.

Every model (towerrec and the baselines) is judged by the same function: it hands over a
score source [users, catalogue] (see towerrec.evaluation.topk), scored a chunk of users at
a time; items each user saw in training are not ranked. towerrec's scores are retrieval's:
the towers' dot product plus the run's item prior at each query's time
(towerrec.training.prior). `evaluation.max_users` evaluates a
seeded uniform sample of each split's users instead of all of them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

from towerrec.data.features import (
    Queries,
    catalogue_rows,
    evaluation_queries,
    sample_users,
    tf_dataset,
)
from towerrec.evaluation.topk import top_k_scores
from towerrec.training.prior import (
    PriorScores,
    item_log_prior,
    request_buckets,
    serving_time,
)

import numpy as np
import pandas as pd

METRIC_NOTE = ("Full-catalogue ranking, each user's training items excluded; per-user mean "
               "± its standard error. Recall@K = hits in top K / number of held-out items "
               "of the user.")


def top_k(scores: np.ndarray, exclude: List[np.ndarray], k: int) -> np.ndarray:
    """[users, items] scores -> [users, k] item rows, best first, excluded rows skipped."""
    return top_k_scores(scores, k, exclude)[0]


def target_hits(top: np.ndarray, targets: List[np.ndarray]) -> np.ndarray:
    """Catalogue rows [n, k] and each row's targets -> bool [n, k]: is it a target."""
    lengths = np.array([len(t) for t in targets], np.int64)
    flat = (np.concatenate(targets) if len(targets) else np.zeros(0)).astype(np.int64)
    # One key per (user, row): row + 1 keeps NO_ROW (-1) from meeting the previous user.
    width = max(int(top.max(initial=-1)), int(flat.max(initial=-1))) + 2
    user = np.arange(len(top), dtype=np.int64)
    keys = np.repeat(user, lengths) * width + flat + 1
    return np.isin(user[:, None] * width + top + 1, keys)


def ranking_metrics(top: np.ndarray, targets: List[np.ndarray],
                    ks: Sequence[int] = (10, 100)) -> Dict[str, float]:
    """Recall@k for every k and NDCG@10 over users with at least one target: per-user mean
    ("recall_at_10") and its standard error ("recall_at_10_se"), and "users", their number.
    The standard error is nan for fewer than two users."""
    lengths = np.array([len(t) for t in targets], np.int64)
    judged = lengths > 0
    hits, lengths = target_hits(top, targets)[judged], lengths[judged]
    discounts = 1.0 / np.log2(np.arange(2, min(10, top.shape[1]) + 2))
    ideal = np.cumsum(discounts)[np.minimum(lengths, len(discounts)) - 1]
    per_user = {f"recall_at_{k}": hits[:, :k].sum(axis=1) / lengths for k in ks}
    per_user["ndcg_at_10"] = (hits[:, :len(discounts)] @ discounts) / ideal
    metrics = {}
    for name, values in per_user.items():
        metrics[name] = float(values.mean()) if len(values) else float("nan")
        metrics[f"{name}_se"] = (float(values.std(ddof=1) / np.sqrt(len(values)))
                                 if len(values) > 1 else float("nan"))
    metrics["users"] = int(judged.sum())
    return metrics


def recall_curve(top: np.ndarray, targets: List[np.ndarray]) -> List[float]:
    """Recall@1 .. Recall@k (k = top.shape[1]), each the per-user mean over users with at
    least one target, as `ranking_metrics` computes Recall@K."""
    lengths = np.array([len(t) for t in targets], np.int64)
    judged = lengths > 0
    if not judged.any():
        return [float("nan")] * top.shape[1]
    hits = target_hits(top, targets)[judged]
    return (np.cumsum(hits, axis=1) / lengths[judged, None]).mean(axis=0).tolist()


def evaluate_scores(scores, queries: Queries, ks: Sequence[int] = (10, 100),
                    chunk_rows: Optional[int] = None, curve: bool = False) -> Dict[str, Any]:
    """Metrics of a score source [users, catalogue] (a score matrix, or `DotScores`),
    scored `chunk_rows` users at a time (default: by memory budget, see topk). With
    `curve`, also "recall_curve": Recall@1 .. Recall@max(ks) (a list)."""
    rows, _ = top_k_scores(scores, max(ks), queries.exclude, chunk_rows)
    metrics: Dict[str, Any] = ranking_metrics(rows, queries.targets, ks)
    if curve:
        metrics["recall_curve"] = recall_curve(rows, queries.targets)
    return metrics


def _cell(metrics: Dict[str, float], column: str, errors: bool) -> str:
    se = metrics.get(f"{column}_se")
    if errors and se is not None:
        return f"{metrics[column]:.4f} ± {se:.4f}"
    return f"{metrics[column]:.4f}"


def _users(metrics: Dict[str, float]) -> str:
    users, total = metrics.get("users", ""), metrics.get("users_total")
    return f"{users} of {total}" if total is not None and total != users else f"{users}"


def markdown_table(rows: Dict[str, Dict[str, Dict[str, float]]],
                   columns: Sequence[str] = ("recall_at_10", "recall_at_100",
                                             "ndcg_at_10"),
                   errors: bool = True) -> str:
    """{model: {split: metrics}} -> a markdown table, one row per model and split; with
    `errors`, each mean with its standard error ("0.1461 ± 0.0040"); "users" says
    "N of M" where a sample of the split was evaluated."""
    header = "| model | split | users | " + " | ".join(
        c.replace("_at_", "@").replace("recall", "Recall").replace("ndcg", "NDCG")
        for c in columns) + " |"
    lines = [header, "|" + "---|" * (3 + len(columns))]
    for model, splits in rows.items():
        for split, metrics in splits.items():
            values = " | ".join(_cell(metrics, c, errors) for c in columns)
            lines.append(f"| {model} | {split} | {_users(metrics)} | {values} |")
    return "\n".join(lines)


EMBED_CHUNK = 64 * 1024  # rows whose text embeddings are held at once (64 x 1024 batches)


def _embed(tower, features, text_inputs, batch_size: int = 1024) -> np.ndarray:
    """A tower's outputs for every row of `features`, a chunk of rows at a time: the text
    embeddings a chunk reads (float32 [rows, hidden], 1.5 GB for a million items at once)
    are held for that chunk only."""
    rows = len(next(iter(features.values())))
    outputs = []
    for start in range(0, rows, EMBED_CHUNK):
        chunk = {name: values[start:start + EMBED_CHUNK] for name, values in features.items()}
        batches = tf_dataset(chunk, text_inputs, batch_size, tower.preprocess)
        outputs += [tower(batch, training=False).numpy() for batch in batches]
    return np.concatenate(outputs)


def candidate_embeddings(run, limit: Optional[int] = None) -> np.ndarray:
    """[catalogue, embedding_dim] from the candidate tower, in catalogue order (the first
    `limit` items only, when given)."""
    catalogue = {name: values[:limit] for name, values in run.catalogue.items()}
    return _embed(run.model.candidate_tower, catalogue, run.text_inputs)


def build_variables(run) -> None:
    """Creates both towers' variables (before a checkpoint is read into them) by embedding
    one item and one training query: the catalogue's size does not matter."""
    candidate_embeddings(run, limit=1)
    query_embeddings(run, training_queries(run, 1))


def query_embeddings(run, queries: Queries) -> np.ndarray:
    features = {"user_id": queries.user_id,
                "history_rows": catalogue_rows(run.catalogue["item_id"], queries.history),
                "context_text": queries.context_text}
    return _embed(run.model.query_tower, features, run.text_inputs)


def retrieval_scores(run, queries: Queries, candidates: Optional[np.ndarray] = None,
                     embeddings: Optional[np.ndarray] = None) -> PriorScores:
    """The score source [queries, catalogue] of retrieval: query . candidate + the
    query's weight * each item's log prior at the query's time (from the training split,
    before that time). `embeddings`: the queries' embeddings, when already computed."""
    candidates = candidate_embeddings(run) if candidates is None else candidates
    embeddings = query_embeddings(run, queries) if embeddings is None else embeddings
    train = run.splits["train"]
    weights = run.prior.query_weights((queries.history != "").any(axis=1))
    if run.prior.off:
        return PriorScores(embeddings, candidates, weights, np.zeros([1, len(candidates)]),
                           np.zeros(len(queries), np.int64))
    starts, bucket = request_buckets(queries.time, len(queries), len(candidates),
                                     serving_time(train))
    prior = item_log_prior(train, run.catalogue["item_id"], starts, run.prior)
    return PriorScores(embeddings, candidates, weights, prior, bucket)


def sampled_split(run, split: str) -> pd.DataFrame:
    """The split's interactions of every user, or with `evaluation.max_users` of a seeded
    uniform sample of that many users (seed: `split.seed`)."""
    return sample_users(run.splits[split], run.config.evaluation.max_users,
                        run.config.split.seed)


def split_size(run, split: str) -> int:
    """Users of the split (evaluated or not)."""
    return int(run.splits[split]["user_id"].nunique())


def split_queries(run, split: str) -> Queries:
    """Queries of the split's (sampled) users: the sample is drawn first, so users left out
    cost nothing."""
    return evaluation_queries(
        sampled_split(run, split), run.splits["train"], run.catalogue["item_id"],
        run.config.towers.history_length, known_users=(split != "cold_user"))


def training_queries(run, users: int) -> Queries:
    """Queries of the first `users` training users, their training items as history: a
    sample every run has, whatever its held-out splits are called. Asked as a served
    request is, after all training data (time None: the item prior at serving time)."""
    train = run.splits["train"]
    chosen = train[train["user_id"].isin(sorted(train["user_id"].unique())[:users])]
    queries = evaluation_queries(chosen, train, run.catalogue["item_id"],
                                 run.config.towers.history_length, known_users=True)
    return dataclasses.replace(queries, time=None)


def evaluate_split(run, split: str, candidates: Optional[np.ndarray] = None,
                   curve: bool = False) -> Dict[str, Any]:
    """Metrics of the split's (sampled) users; "users" evaluated of "users_total" (with
    `curve`, "recall_curve" too: see `evaluate_scores`). Peak memory: candidates
    [catalogue, d], query embeddings [users, d], one chunk's scores."""
    queries = split_queries(run, split)
    candidates = candidate_embeddings(run) if candidates is None else candidates
    metrics = evaluate_scores(retrieval_scores(run, queries, candidates), queries,
                              run.config.evaluation.ks, curve=curve)
    metrics["users_total"] = split_size(run, split)
    return metrics


def evaluate_run(run, curve: bool = False) -> Dict[str, Dict[str, Any]]:
    """{split: metrics} for every held-out split of the run."""
    candidates = candidate_embeddings(run)
    return {split: evaluate_split(run, split, candidates, curve)
            for split in run.splits if split != "train"}
