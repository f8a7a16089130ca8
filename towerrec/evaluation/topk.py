"""Exact top-k over a whole catalogue, a chunk of queries at a time.

The one top-k of the project (evaluation, the ranker's lists, exact index search, the
baselines). Scores come from a score source: anything with `.shape == (n, m)` whose
`source[a:b]` is the [b - a, m] score block of queries a..b; a dense score matrix is one,
`DotScores` (query and candidate embeddings, scored per block) another. Peak memory is
that of one block, about 8 bytes per score: never n x m.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

# Scores in one block: 2**26 float32 are 256 MB, about 500 MB at the peak of its top-k.
SCORE_BUDGET = 1 << 26


class DotScores:
    """The score source queries [n, d] @ candidates[m, d].T, computed block by block."""

    def __init__(self, queries: np.ndarray, candidates: np.ndarray):
        self.queries = np.asarray(queries, np.float32)
        self.candidates = np.asarray(candidates, np.float32)
        self.shape = (len(self.queries), len(self.candidates))

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.queries[rows] @ self.candidates.T


def chunk_rows_for(num_candidates: int, budget: int = SCORE_BUDGET) -> int:
    """Queries per block so that a block holds at most `budget` scores (at least one)."""
    return max(1, budget // max(num_candidates, 1))


def top_k_scores(scores, k: int, exclude: Optional[List[np.ndarray]] = None,
                 chunk_rows: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """A score source [n, m] -> (rows int64 [n, k'], scores float32 [n, k']), k' = min(k, m):
    each query's best candidates, best first, the lower row first among equal scores.

    `exclude[i]` (catalogue rows) are never ranked for query i; when fewer than k' rows
    are left, excluded rows fill the tail with score -inf. Queries are scored
    `chunk_rows` at a time (default: `chunk_rows_for(m)`)."""
    n, m = scores.shape
    k = min(k, m)
    chunk_rows = chunk_rows or chunk_rows_for(m)
    top_rows = np.empty([n, k], np.int64)
    top_scores = np.empty([n, k], np.float32)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        block = np.asarray(scores[start:stop], np.float32)
        if exclude is not None:
            if block.base is not None:  # a view of the caller's scores: not ours to write
                block = block.copy()
            _mask(block, exclude[start:stop])
        top_rows[start:stop], top_scores[start:stop] = block_top_k(block, k)
    return top_rows, top_scores


def _mask(block: np.ndarray, exclude: List[np.ndarray]) -> None:
    """Sets block[i, exclude[i]] to -inf, in place."""
    lengths = [len(rows) for rows in exclude]
    if sum(lengths):
        block[np.repeat(np.arange(len(block)), lengths),
              np.concatenate(exclude).astype(np.int64)] = -np.inf


def block_top_k(block: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Scores [r, m] -> (columns int64 [r, k], scores [r, k]) of each row's k best, best
    first, the lower column first among equal scores; 1 <= k <= m, no NaN."""
    r, m = block.shape
    kth = np.partition(block, m - k, axis=1)[:, [m - k]]  # each row's k-th best (a copy)
    take = block > kth
    tied = block == kth
    # Of the scores equal to the k-th best, the lowest columns fill the k places; only
    # rows with more such scores than places need the (costlier) running count.
    places = k - take.sum(axis=1)
    crowded = np.flatnonzero(tied.sum(axis=1) > places)
    if len(crowded):
        ties = tied[crowded]
        ties &= np.cumsum(ties, axis=1, dtype=np.int32) <= places[crowded, None]
        tied[crowded] = ties
    take |= tied
    columns: np.ndarray = np.nonzero(take)[1]  # ascending within each row
    if len(columns) != r * k:
        raise ValueError("top-k of scores with NaN")
    columns = columns.reshape(r, k)
    values = np.take_along_axis(block, columns, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(columns, order, 1), np.take_along_axis(values, order, 1)
