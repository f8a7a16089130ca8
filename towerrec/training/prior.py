"""The item prior: how likely an item is to be chosen next, before knowing who asks.

The towers train with log-Q correction, so their scores rank items by how much more likely
the query makes them than their popularity alone does (a pointwise mutual information),
not by how likely they are: that finds the long tail, and loses to popularity on the head.
Retrieval adds popularity back, calibrated:

    score(query, item) = query . candidate + weight(query) * log prior(item, time)

The prior is an item's smoothed share of recent interactions (each counts 0.5 ** (age /
half-life)) strictly before the request's time: in evaluation the time of the user's first
held-out interaction, at serving the end of the training data. `weight` is one number for
requests with a history and one for requests without (new users lean on it more). A new
item (no interaction yet) gets the prior of the item at `new_item_quantile` of the known
ones. The settings are chosen on validation data (towerrec.training.calibrate).

In a served graph the prior is one more dimension of the vectors: queries [n, d + 1] end
with their weight, candidates [m, d + 1] with their log prior, so that brute force and
ScaNN search a plain dot product. Both ends are scaled (`column_scale`), so the product is
unchanged: raw, a log prior of about -14 at a million items dominates every candidate's
norm, and ScaNN's partitioning and quantization, tuned for norms near 1, lose a share of
the exact top 10 (benchmarks/index.py measures it).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Dict, Optional, Tuple

from towerrec.data.features import catalogue_rows

import numpy as np
import pandas as pd

DAY = 86400.0
# Added to every item's decayed count: an item's share is never zero.
SMOOTHING = 0.5
# The prior rows held at once in evaluation ([request times, catalogue]): past this, request
# times are bucketed coarser than a day.
PRIOR_BUDGET = 1 << 25
PRIOR_FILE = "prior.json"


@dataclasses.dataclass(frozen=True)
class PriorSettings:
    half_life_days: Optional[float]
    weight_with_history: float
    weight_without_history: float
    new_item_quantile: float
    # How they were chosen: {"calibrated": bool, validation metrics per split}.
    chosen: Dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, prior_config) -> "PriorSettings":
        return cls(prior_config.half_life_days, prior_config.weight_with_history,
                   prior_config.weight_without_history, prior_config.new_item_quantile,
                   {"calibrated": False})

    @property
    def off(self) -> bool:
        return self.weight_with_history == 0 and self.weight_without_history == 0

    def query_weights(self, has_history: np.ndarray) -> np.ndarray:
        """bool [n] -> float32 [n]: each request's weight of the prior."""
        return np.where(has_history, self.weight_with_history,
                        self.weight_without_history).astype(np.float32)

    @property
    def column_scale(self) -> float:
        """What served vectors scale the prior's column by: candidates hold scale * log
        prior, queries weight / scale. The square root of the weight of requests with a
        history (most of them) puts the same factor on both ends."""
        return math.sqrt(self.weight_with_history or self.weight_without_history or 1.0)

    def served_weights(self) -> Tuple[float, float]:
        """The query end of the served column: (with a history, without one)."""
        return (self.weight_with_history / self.column_scale,
                self.weight_without_history / self.column_scale)


NO_PRIOR = PriorSettings(None, 0.0, 0.0, 0.0, {"calibrated": False})


def save_prior(settings: PriorSettings, model_dir: Path) -> None:
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / PRIOR_FILE).write_text(json.dumps(dataclasses.asdict(settings),
                                                         indent=2))


def configured_prior(prior_config) -> PriorSettings:
    """The config's settings; none until calibrated when it asks for calibration."""
    return NO_PRIOR if prior_config.calibrate else PriorSettings.from_config(prior_config)


def load_prior(model_dir: Path, prior_config) -> PriorSettings:
    """The settings saved with a trained model, else `configured_prior`."""
    path = Path(model_dir) / PRIOR_FILE
    if path.exists():
        return PriorSettings(**json.loads(path.read_text()))
    return configured_prior(prior_config)


def decayed_counts(rows: np.ndarray, times: np.ndarray, num_items: int, at: np.ndarray,
                   half_life_days: Optional[float]):
    """Interactions (catalogue rows, timestamps in seconds; [n] each) -> per time in `at`
    [b], each item's interactions strictly before it: (decayed float64 [b, items], each
    weighted 0.5 ** (age / half-life), or 1 with a null half-life; and plain counts)."""
    order = np.argsort(times, kind="stable")
    rows, times = np.asarray(rows, np.int64)[order], np.asarray(times, np.float64)[order]
    at = np.asarray(at, np.float64)
    decayed, plain = np.zeros([len(at), num_items]), np.zeros([len(at), num_items])
    running, seen, now, done = np.zeros(num_items), np.zeros(num_items), None, 0
    rate = 0.0 if half_life_days is None else np.log(2.0) / (half_life_days * DAY)
    for i in np.argsort(at, kind="stable"):
        until = max(done, int(np.searchsorted(times, at[i], side="left")))
        if now is not None:
            running *= np.exp(-rate * (at[i] - now))
        running += np.bincount(rows[done:until], minlength=num_items,
                               weights=np.exp(-rate * (at[i] - times[done:until])))
        seen += np.bincount(rows[done:until], minlength=num_items)
        now, done = at[i], until
        decayed[i], plain[i] = running, seen
    return decayed, plain


def log_prior(decayed: np.ndarray, plain: np.ndarray, new_item_quantile: float) -> np.ndarray:
    """Decayed and plain counts [b, items] -> log of each item's smoothed share, float32
    [b, items]; an item with no interaction has the `new_item_quantile` of the others'."""
    share = np.log(decayed + SMOOTHING) - np.log(
        (decayed + SMOOTHING).sum(axis=1, keepdims=True))
    for row, known in zip(share, plain > 0):
        if known.any() and not known.all():
            row[~known] = np.quantile(row[known], new_item_quantile)
    return share.astype(np.float32)


def item_log_prior(interactions: pd.DataFrame, catalogue_ids, at: np.ndarray,
                   settings: PriorSettings) -> np.ndarray:
    """float32 [len(at), catalogue]: every catalogue item's log prior at each time of `at`,
    from `interactions` (item_id, timestamp) before it."""
    rows = catalogue_rows(catalogue_ids, interactions["item_id"].to_numpy(dtype=object))
    times = interactions["timestamp"].to_numpy(np.float64)
    known = rows >= 0
    decayed, plain = decayed_counts(rows[known], times[known], len(catalogue_ids), at,
                                    settings.half_life_days)
    return log_prior(decayed, plain, settings.new_item_quantile)


def serving_time(interactions: pd.DataFrame) -> float:
    """The time a served model's prior is taken at: just after its last interaction."""
    return float(interactions["timestamp"].max()) + 1.0 if len(interactions) else 0.0


def request_buckets(times: Optional[np.ndarray], n: int, num_items: int,
                    default: float, budget: int = PRIOR_BUDGET):
    """Request times [n] (None: all at `default`) -> (bucket start times [b], each
    request's bucket [n]). Buckets are whole days (coarser when [b, items] would pass
    `budget`): a bucket starts at or before its requests, so no prior looks past one."""
    if times is None:
        return np.array([default]), np.zeros(n, np.int64)
    width = DAY
    while True:
        starts, bucket = np.unique(np.floor(np.asarray(times, np.float64) / width) * width,
                                   return_inverse=True)
        if len(starts) * num_items <= budget or len(starts) == 1:
            return starts, bucket.reshape(-1)
        width *= 2


class PriorScores:
    """The score source (see towerrec.evaluation.topk) queries [n, d] @ candidates [m, d].T
    + weights [n, 1] * prior[prior_row], each query reading the prior row [m] of its time:
    `prior` [b, m], `prior_row` [n]."""

    def __init__(self, queries, candidates, weights, prior, prior_row):
        self.queries = np.asarray(queries, np.float32)
        self.candidates = np.asarray(candidates, np.float32)
        self.weights = np.asarray(weights, np.float32).reshape(-1, 1)
        self.prior = np.asarray(prior, np.float32)
        self.prior_row = np.asarray(prior_row, np.int64)
        self.shape = (len(self.queries), len(self.candidates))

    def __getitem__(self, rows: slice) -> np.ndarray:
        return (self.queries[rows] @ self.candidates.T
                + self.weights[rows] * self.prior[self.prior_row[rows]])


def with_prior(vectors: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Vectors [m, d] and one number each [m] -> [m, d + 1]."""
    return np.concatenate([np.asarray(vectors, np.float32),
                           np.asarray(last, np.float32).reshape(-1, 1)], axis=1)


def served_candidates(run, candidate_embeddings: np.ndarray) -> np.ndarray:
    """The vectors a served index holds: [m, d + 1] ending with each item's log prior as of
    the end of the training data (times `column_scale`), or the embeddings as they are when
    the run has no prior."""
    if run.prior.off:
        return np.asarray(candidate_embeddings, np.float32)
    train = run.splits["train"]
    prior = item_log_prior(train, run.catalogue["item_id"], np.array([serving_time(train)]),
                           run.prior)
    return with_prior(candidate_embeddings, run.prior.column_scale * prior[0])


def served_queries(run, query_embeddings: np.ndarray, has_history: np.ndarray) -> np.ndarray:
    """The vectors a served index is searched with: [n, d + 1] ending with each request's
    weight of the prior (over `column_scale`), or the embeddings as they are when the run
    has no prior."""
    if run.prior.off:
        return np.asarray(query_embeddings, np.float32)
    with_history, without = run.prior.served_weights()
    return with_prior(query_embeddings, np.where(has_history, with_history, without))
