"""The benchmark's item-item baselines against weights computed by hand."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from item_models import ease, rp3beta  # noqa: E402

# Items 0 and 1 are seen together once (user 0), 0 alone once (user 1); items 2 and 3
# always together (users 2, 3).
X = sp.csr_matrix(np.array([[1, 1, 0, 0],
                            [1, 0, 0, 0],
                            [0, 0, 1, 1],
                            [0, 0, 1, 1]], np.float32))


def test_ease_on_a_hand_made_matrix():
    # X^T X + I = blockdiag([[3, 1], [1, 2]], [[3, 2], [2, 3]]), both of determinant 5:
    # P = blockdiag([[2, -1], [-1, 3]] / 5, [[3, -2], [-2, 3]] / 5), B[i, j] = -P[i, j] / P[j, j].
    expected = np.array([[0, 1 / 3, 0, 0],
                         [1 / 2, 0, 0, 0],
                         [0, 0, 0, 2 / 3],
                         [0, 0, 2 / 3, 0]], np.float32)
    weights = ease(X, l2=1.0)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    # User 1 has item 0 only: item 1 scores 1/3, the other block nothing.
    np.testing.assert_allclose(X[1].toarray() @ weights, [[0, 1 / 3, 0, 0]], atol=1e-6)


def test_rp3beta_on_a_hand_made_matrix():
    # P(1 | user 0) = 1/2 and P(user 0 | item 0) = 1/2: W[0, 1] = 1/4; item 1 has one
    # user, who goes to item 0 half the time: W[1, 0] = 1/2; W[2, 3] = 2 * 1/2 * 1/2.
    walk = np.array([[0, 1 / 4, 0, 0],
                     [1 / 2, 0, 0, 0],
                     [0, 0, 0, 1 / 2],
                     [0, 0, 1 / 2, 0]], np.float32)
    np.testing.assert_allclose(rp3beta(X, alpha=1.0, beta=0.0), walk, atol=1e-6)
    # beta = 1 divides each target item by its popularity (2, 1, 2, 2).
    np.testing.assert_allclose(rp3beta(X, alpha=1.0, beta=1.0),
                               walk / np.array([2, 1, 2, 2], np.float32), atol=1e-6)
    # One neighbour a row keeps each row's largest weight only.
    kept = rp3beta(sp.csr_matrix(np.array([[1, 1, 1], [1, 1, 0]], np.float32)), 1.0, 0.0, 1)
    assert (np.count_nonzero(kept, axis=1) == 1).all()
