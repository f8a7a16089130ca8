"""Chunked top-k, ranking metrics with standard errors, user sampling and the ranker's sparse
co-occurrence table: numpy-sized checks, no model."""
from __future__ import annotations

from types import SimpleNamespace

from towerrec.config import ConfigError, load_config
from towerrec.data.features import Queries
from towerrec.evaluation.evaluate import (
    evaluate_scores,
    markdown_table,
    ranking_metrics,
    sampled_split,
    split_size,
    target_hits,
    top_k,
)
from towerrec.evaluation.topk import DotScores, chunk_rows_for, top_k_scores
from towerrec.export.index import exact_top_k
from towerrec.towers.ranking_features import NO_ROW
from towerrec.training.rank import cooccurrence_neighbours, history_rows

import numpy as np
import pandas as pd
import pytest


def reference_top_k(scores, exclude, k):
    """Row by row: excluded rows to -inf, then sorted by (-score, row)."""
    scores = np.array(scores, np.float32)
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    order = np.stack([np.lexsort((np.arange(len(s)), -s))[:k] for s in scores])
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture
def tied_scores():
    """37 users x 53 items, scores in tenths (many ties, at the k-th place too); random
    exclusions, one user with only 3 items left (fewer than k: -inf fills the tail)."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, size=(37, 53)).astype(np.float32) / 10
    exclude = [rng.choice(53, rng.integers(0, 6), replace=False) for _ in range(37)]
    exclude[3] = np.arange(50)
    exclude[4] = np.array([], np.int64)
    return scores, exclude


@pytest.mark.parametrize("chunk_rows", [1, 5, 37, 100])
def test_chunked_top_k_equals_the_row_by_row_reference(tied_scores, chunk_rows):
    scores, exclude = tied_scores
    expected_rows, expected_scores = reference_top_k(scores, exclude, 10)
    rows, top = top_k_scores(scores, 10, exclude, chunk_rows)
    assert rows.dtype == np.int64 and top.dtype == np.float32 and rows.shape == (37, 10)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(top, expected_scores)
    assert np.isneginf(top[3, 3:]).all() and sorted(rows[3, :3]) == [50, 51, 52]
    np.testing.assert_array_equal(top_k(scores, exclude, 10), expected_rows)
    unmasked = np.array(scores)
    top_k_scores(scores, 10, exclude, chunk_rows)
    np.testing.assert_array_equal(scores, unmasked)  # the caller's matrix is left as it was


def test_dot_scores_and_exact_search_match_the_dense_product():
    rng = np.random.default_rng(1)
    queries, items = rng.normal(size=(37, 8)), rng.normal(size=(53, 8))
    dense = (queries.astype(np.float32) @ items.astype(np.float32).T)
    expected = reference_top_k(dense, [], 10)
    for rows, top in (top_k_scores(DotScores(queries, items), 10, chunk_rows=4),
                      exact_top_k(queries, items, 10)):
        np.testing.assert_array_equal(rows, expected[0])
        np.testing.assert_allclose(top, expected[1], rtol=1e-6)
    assert top_k_scores(dense, 100)[0].shape == (37, 53)  # k above the catalogue: all


class RecordingScores:
    """A score source that remembers how many users each block it gave had."""

    def __init__(self, scores):
        self.scores, self.shape, self.blocks = scores, scores.shape, []

    def __getitem__(self, rows: slice):
        block = np.array(self.scores[rows])
        self.blocks.append(len(block))
        return block


def test_scores_are_asked_for_a_chunk_of_users_at_a_time(tied_scores):
    scores, exclude = tied_scores
    queries = Queries(np.zeros(37), None, None, [np.array([1])] * 37, exclude)
    source = RecordingScores(scores)
    chunked = evaluate_scores(source, queries, ks=(10, 20), chunk_rows=4)
    assert max(source.blocks) <= 4 and sum(source.blocks) == 37
    assert chunked == evaluate_scores(scores, queries, ks=(10, 20))
    # The default chunk keeps a block's scores under the budget, at least one user.
    assert chunk_rows_for(53, budget=53 * 5 + 52) == 5
    assert chunk_rows_for(10 ** 9, budget=1 << 26) == 1


def test_hand_computed_recall_and_ndcg():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],    # item 0 excluded
                       [0.1, 0.5, 0.5, 0.3, 0.2, 0.0],    # items 1, 2 tie: 1 first
                       [0.3, 0.3, 0.3, 0.3, 0.9, 0.1]],   # item 4 excluded; 0-3 tie
                      np.float32)
    exclude = [np.array([0]), np.array([], np.int64), np.array([4])]
    targets = [np.array([2, 5]), np.array([2]), np.array([0, 3])]
    queries = Queries(np.zeros(3), None, None, targets, exclude)
    metrics = evaluate_scores(scores, queries, ks=(1, 3))
    # Top 3: user 0 [1, 2, 3] (hit at 2nd), user 1 [1, 2, 3] (hit at 2nd: the tie puts
    # item 1 first), user 2 [0, 1, 2] (hit at 1st; item 3 loses the tie, 4th).
    # Recall@1: 0, 0, 1/2 -> 1/6. Recall@3: 1/2, 1, 1/2 -> 2/3.
    # NDCG (over the 3 listed), d = 1/log2(3): user 0 d / (1 + d) (two targets), user 1
    # d / 1, user 2 1 / (1 + d); users 0 and 2 sum to 1 -> mean (1 + d) / 3.
    d = 1 / np.log2(3)
    assert metrics["recall_at_1"] == pytest.approx(1 / 6)
    assert metrics["recall_at_3"] == pytest.approx(2 / 3)
    assert metrics["ndcg_at_10"] == pytest.approx((1 + d) / 3)
    assert metrics["users"] == 3
    assert metrics["recall_at_3_se"] == pytest.approx(np.std([.5, 1, .5], ddof=1) / np.sqrt(3))
    # Recall@2 by hand: 1/2, 1, 1/2 (user 2's second is item 1, no hit) -> 2/3.
    curve = evaluate_scores(scores, queries, ks=(1, 3), curve=True)["recall_curve"]
    assert curve == pytest.approx([1 / 6, 2 / 3, 2 / 3])


def test_recall_curve_plots_one_png_per_split(tmp_path):
    from towerrec.evaluation.plots import plot_recall_curves

    curves = {"warm": {"a": [0.1, 0.2, 0.3], "b": [0.0, 0.1, 0.4]}, "future": {"a": [0.5]}}
    written = plot_recall_curves(curves, tmp_path, "test")
    assert sorted(p.name for p in written) == ["recall_at_k-future.png",
                                               "recall_at_k-warm.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_standard_errors_are_those_of_the_per_user_values():
    rng = np.random.default_rng(2)
    top = np.stack([rng.permutation(60)[:20] for _ in range(50)])
    targets = [rng.choice(60, rng.integers(1, 8), replace=False) for _ in range(50)]
    targets.append(np.array([], np.int64))  # no target: not judged
    top = np.concatenate([top, top[:1]])
    metrics = ranking_metrics(top, targets, ks=(10, 20))
    hits = np.array([[row in t for row in r] for r, t in zip(top[:50], targets[:50])])
    lengths = np.array([len(t) for t in targets[:50]])
    for k in (10, 20):
        recall = hits[:, :k].sum(axis=1) / lengths
        assert metrics[f"recall_at_{k}"] == pytest.approx(recall.mean())
        assert metrics[f"recall_at_{k}_se"] == pytest.approx(
            np.std(recall, ddof=1) / np.sqrt(50))
    discounts = 1 / np.log2(np.arange(2, 12))
    ndcg = (hits[:, :10] @ discounts) / np.array([discounts[:min(n, 10)].sum()
                                                  for n in lengths])
    assert metrics["ndcg_at_10"] == pytest.approx(ndcg.mean())
    assert metrics["ndcg_at_10_se"] == pytest.approx(np.std(ndcg, ddof=1) / np.sqrt(50))
    assert metrics["users"] == 50


def test_target_hits_never_match_padding_to_another_user():
    top = np.array([[4, NO_ROW], [0, 1]])
    hits = target_hits(top, [np.array([4]), np.array([1, 4])])
    assert hits.tolist() == [[True, False], [False, True]]


def test_markdown_table_shows_standard_errors_and_the_sample():
    metrics = {"recall_at_10": 0.14612, "recall_at_10_se": 0.004, "users": 100,
               "users_total": 900}
    table = markdown_table({"m": {"warm": metrics}}, columns=("recall_at_10",))
    assert table.splitlines()[-1] == "| m | warm | 100 of 900 | 0.1461 ± 0.0040 |"
    plain = markdown_table({"m": {"warm": metrics}}, columns=("recall_at_10",), errors=False)
    assert plain.splitlines()[-1] == "| m | warm | 100 of 900 | 0.1461 |"


def test_a_seeded_sample_of_max_users_users_is_evaluated():
    frame = pd.DataFrame({"user_id": np.repeat([f"u{i}" for i in range(40)], 3),
                          "item_id": "i"})

    def run(max_users):
        config = load_config(None, {"evaluation.max_users": max_users})
        return SimpleNamespace(splits={"warm": frame}, config=config)

    sample = sampled_split(run(10), "warm")
    assert sample["user_id"].nunique() == 10 and len(sample) == 30
    assert sample.equals(sampled_split(run(10), "warm"))  # seeded
    assert sampled_split(run(None), "warm") is frame
    assert sampled_split(run(100), "warm") is frame
    assert split_size(run(10), "warm") == 40
    for wrong in (0, -3, 2.5, True, "all"):
        with pytest.raises(ConfigError, match="evaluation.max_users"):
            load_config(None, {"evaluation.max_users": wrong})


def test_history_rows_maps_unknown_and_padding_to_no_row():
    run = SimpleNamespace(catalogue={"item_id": np.array(["a", "b", "c"], dtype=object)})
    history = np.array([["", "a"], ["zz", "c"]], dtype=object)
    assert history_rows(run, history).tolist() == [[NO_ROW, 0], [NO_ROW, 2]]


def dense_cooccurrence_neighbours(rows, users, num_items, neighbours, chunk=512):
    """The former implementation (a dense [chunk, items] block), as the reference."""
    from scipy import sparse

    pairs = np.unique(np.stack([users, rows], axis=1), axis=0)
    seen = sparse.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])),
                             shape=(int(users.max()) + 1 if len(users) else 0, num_items))
    counts = np.asarray(seen.sum(axis=0)).ravel()
    norm = np.sqrt(np.maximum(counts, 1.0))
    m = min(neighbours, max(num_items - 1, 1))
    out_rows = np.full([num_items, m], NO_ROW, np.int64)
    out_weights = np.zeros([num_items, m], np.float32)
    by_item = seen.T.tocsr()
    for start in range(0, num_items, chunk):
        block = (by_item[start:start + chunk] @ seen).toarray()      # [chunk, items]
        block /= norm[start:start + chunk, None] * norm[None, :]
        block[np.arange(len(block)), np.arange(start, start + len(block))] = 0.0
        top = np.argpartition(-block, m - 1, axis=1)[:, :m]
        weights = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-weights, axis=1)
        top, weights = np.take_along_axis(top, order, 1), np.take_along_axis(weights, order, 1)
        out_rows[start:start + len(block)] = np.where(weights > 0, top, NO_ROW)
        out_weights[start:start + len(block)] = np.where(weights > 0, weights, 0.0)
    return out_rows, out_weights


def random_interactions(seed, users=40, items=30, n=250):
    """(rows, users) with repeats; the last items are never seen (new items)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, items - 3, n), rng.integers(0, users, n)


@pytest.mark.parametrize("budget", [1, 50, 1 << 23])
def test_sparse_cooccurrence_equals_the_dense_one(budget):
    rows, users = random_interactions(3)
    full_rows, full_weights = dense_cooccurrence_neighbours(rows, users, 30, 29)
    for m in (5, 29):
        got_rows, got_weights = cooccurrence_neighbours(rows, users, 30, m, budget=budget)
        dense_rows, dense_weights = dense_cooccurrence_neighbours(rows, users, 30, m)
        np.testing.assert_array_equal(got_weights, dense_weights)
        for item in range(30):
            # The dense top m (ties in any order) is the sparse one up to order among
            # equal weights; the sparse one puts the lower row first.
            expected = sorted((-w, r) for r, w in zip(full_rows[item], full_weights[item])
                              if r != NO_ROW)[:m]
            got = [(-w, r) for r, w in zip(got_rows[item], got_weights[item]) if r != NO_ROW]
            assert got == expected, item
            dense = [(-w, r) for r, w in zip(dense_rows[item], dense_weights[item])
                     if r != NO_ROW]
            boundary = max(expected)[0] if len(expected) == m else np.inf
            assert ({e for e in dense if e[0] < boundary}
                    == {e for e in expected if e[0] < boundary}), item
        assert (got_rows[27:] == NO_ROW).all() and not np.isin([27, 28, 29], got_rows).any()


def test_cooccurrence_history_keeps_each_users_latest_interactions():
    rows, users = random_interactions(4)
    latest = np.zeros(len(rows), bool)
    for user in np.unique(users):
        latest[np.flatnonzero(users == user)[-3:]] = True
    expected = cooccurrence_neighbours(rows[latest], users[latest], 30, 6)
    got = cooccurrence_neighbours(rows, users, 30, 6, history=3)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_queries_of_a_split_follow_time_and_an_empty_split_has_none():
    from towerrec.data.features import evaluation_queries

    columns = ["user_id", "item_id", "timestamp", "context_text"]
    train = pd.DataFrame([("u1", "a", 3, ""), ("u1", "b", 1, ""), ("u2", "c", 5, "")],
                         columns=columns)
    test = pd.DataFrame([("u1", "c", 9, "late"), ("u1", "d", 7, "early"),
                         ("u2", "a", 8, "x")], columns=columns)
    catalogue = np.array(["a", "b", "c", "d"], dtype=object)
    queries = evaluation_queries(test, train, catalogue, history_length=3, known_users=True)
    assert queries.user_id.tolist() == ["u1", "u2"]
    assert queries.history.tolist() == [["", "b", "a"], ["", "", "c"]]  # by time, padded left
    assert queries.context_text.tolist() == ["early", "x"]  # the first test interaction's
    assert [t.tolist() for t in queries.targets] == [[2, 3], [0]]
    assert [e.tolist() for e in queries.exclude] == [[0, 1], [2]]
    cold = evaluation_queries(test, train, catalogue, 3, known_users=False)
    assert cold.user_id.tolist() == ["", ""] and cold.exclude[0].size == 0
    empty = evaluation_queries(test.iloc[:0], train, catalogue, 3, known_users=True)
    assert len(empty) == 0 and empty.targets == [] and empty.exclude == []


def test_training_histories_are_each_users_earlier_items_most_recent_last():
    from towerrec.data.features import training_examples

    columns = ["user_id", "item_id", "timestamp", "context_text"]
    train = pd.DataFrame([("u2", "c", 4, "z"), ("u1", "b", 2, "y"), ("u1", "a", 1, "x"),
                          ("u1", "c", 3, "x"), ("u2", "a", 9, "z")], columns=columns)
    catalogue = np.array(["a", "b", "c"], dtype=object)
    examples = training_examples(train, catalogue, history_length=2)
    # Sorted by user, then time: u1 a, b, c; u2 c, a.
    assert examples["item_row"].tolist() == [0, 1, 2, 2, 0]
    assert examples["history_rows"].tolist() == [[NO_ROW, NO_ROW], [NO_ROW, 0], [0, 1],
                                                 [NO_ROW, NO_ROW], [NO_ROW, 2]]
    users = examples["user_id"]
    assert users.values[users.index].tolist() == ["u1", "u1", "u1", "u2", "u2"]
    contexts = examples["context_text"]
    assert contexts.values[contexts.index].tolist() == ["x", "y", "x", "z", "z"]
    np.testing.assert_allclose(examples["item_probability"], [0.4, 0.2, 0.4, 0.4, 0.4])


def test_recall_against_qps_plots_a_png(tmp_path):
    from towerrec.evaluation.plots import plot_recall_qps

    path = plot_recall_qps([(10, 0.9, 5000.0), (50, 0.97, 900.0)], 80.0,
                           tmp_path / "sub" / "recall_qps.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
