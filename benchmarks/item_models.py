"""Item-item baselines of the benchmark, as item weight matrices B [items, items]: a user
with interaction row x [items] (0/1) scores the catalogue as x @ B.

* EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): the closed-form
  ridge regression of each item's column on the other items, with a zero diagonal.
* RP3beta (Paudel et al. 2017; as in Dacrema et al. 2019, "Are We Really Making Much
  Progress?"): a three-step random walk user -> item -> user -> item, with transition
  probabilities raised to `alpha` and each target item divided by its popularity^beta,
  each row kept to its `neighbours` largest weights.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp


def ease(matrix: sp.spmatrix, l2: float) -> np.ndarray:
    """B = I - P diagMat(1 / diag(P)), P = (X^T X + l2 I)^-1: B[i, j] = -P[i, j] / P[j, j],
    B[j, j] = 0. Dense [items, items] (float64 for the inverse, float32 returned)."""
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def rp3beta(matrix: sp.spmatrix, alpha: float, beta: float,
            neighbours: Optional[int] = None) -> np.ndarray:
    """W[i, j] = sum_u P(u | i)^alpha P(j | u)^alpha / popularity(j)^beta, zero diagonal,
    each row kept to its `neighbours` largest (None: all). Dense [items, items]."""
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    user_to_item = _row_normalised(matrix)          # P(j | u)   [users, items]
    item_to_user = _row_normalised(matrix.T.tocsr())  # P(u | i)  [items, users]
    user_to_item.data **= alpha
    item_to_user.data **= alpha
    popularity = np.asarray(matrix.sum(axis=0)).ravel()
    with np.errstate(divide="ignore"):
        scale = np.where(popularity > 0, popularity ** -beta, 0.0)
    weights = (item_to_user @ user_to_item).toarray() * scale[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    if neighbours is not None and neighbours < weights.shape[1]:
        kept = np.argpartition(-weights, neighbours - 1, axis=1)[:, :neighbours]
        rows = np.arange(len(weights))[:, None]
        pruned = np.zeros_like(weights)
        pruned[rows, kept] = weights[rows, kept]
        weights = pruned
    return weights.astype(np.float32)


def _row_normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inverse = np.where(sums > 0, 1.0 / sums, 0.0)
    return sp.csr_matrix(sp.diags(inverse) @ matrix)
