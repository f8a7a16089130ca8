"""The ScaNN index: configuration by catalogue size, recall against exact search."""
from __future__ import annotations

from towerrec.export.index import (
    Index,
    build_index,
    exact_top_k,
    recall_against_exact,
    scann_search,
    scann_settings,
)

import numpy as np


def normalized(n, dim, seed, clusters=64):
    """Unit vectors around `clusters` centres: trained embeddings are clustered, not
    uniform on the sphere (the worst case for any partitioning)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_settings_follow_catalogue_size():
    assert scann_settings(1682)["mode"] == "brute_force"
    big = scann_settings(1_000_000)
    assert big["mode"] == "tree_ah" and big["num_leaves"] == 1000
    assert big["reorder"] >= 100 and big["dimensions_per_block"] == 2


def test_brute_force_index_is_exact(tmp_path):
    items = normalized(2000, 32, 0)
    queries = normalized(50, 32, 1)
    build_index(items, [f"item{i}" for i in range(2000)], tmp_path / "index", k=10)
    index = Index(tmp_path / "index")
    ids, scores = index.search(queries, 10)
    exact_ids, exact_scores = index.brute_force(queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_partitioned_index_recall(tmp_path):
    items = normalized(30_000, 32, 2)
    queries = normalized(200, 32, 3)
    settings = build_index(items, np.arange(30_000).astype(str), tmp_path / "index",
                           k=10).settings
    assert settings["mode"] == "tree_ah" and settings["num_leaves"] == 173
    index = Index(tmp_path / "index")
    ids, _ = index.search(queries, 10)
    recall = recall_against_exact(ids.astype(int), exact_top_k(queries, items, 10)[0])
    assert recall >= 0.9, recall


def test_the_stored_searcher_is_the_built_one(tmp_path):
    # What the exports hold (the state in memory) and what the run's index reloads from
    # its files search alike, to the score.
    items = normalized(25_000, 16, 6)
    queries = normalized(100, 16, 7)
    built = build_index(items, np.arange(25_000).astype(str), tmp_path / "index", k=10)
    assert built.settings["mode"] == "tree_ah"
    rows, scores = scann_search(built.state)(queries, 10)
    ids, reloaded_scores = Index(tmp_path / "index").search(queries, 10)
    np.testing.assert_array_equal(ids.astype(int), rows)
    np.testing.assert_array_equal(reloaded_scores, scores)


def test_rebuilding_replaces_the_index_whole(tmp_path):
    build_index(normalized(100, 8, 4), np.arange(100).astype(str), tmp_path / "index")
    build_index(normalized(120, 8, 5), np.arange(120).astype(str), tmp_path / "index")
    assert len(Index(tmp_path / "index").item_ids) == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_the_scale_benchmark_sweeps_the_index_it_built(tmp_path):
    # benchmarks/scale.py's ScaNN step: the run's index at its own setting and around it.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
    spec = importlib.util.spec_from_file_location("scale_benchmark_index", path)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    items = normalized(25_000, 16, 8)
    settings = build_index(items, np.arange(25_000).astype(str), tmp_path / "index",
                           k=10).settings
    result = scale.compare_with_exact(Index(tmp_path / "index"), normalized(200, 16, 9))
    default = settings["num_leaves_to_search"]
    assert [r["leaves"] for r in result["sweep"]] == [default // 2, default, 2 * default,
                                                      4 * default]
    assert [r["default"] for r in result["sweep"]] == [False, True, False, False]
    recalls = [r["recall_at_10"] for r in result["sweep"]]
    # More leaves searched find more (ScaNN's partitioning is trained afresh per build, so
    # neighbouring settings may swap by a hair; the widest against the narrowest may not).
    assert recalls[-1] >= recalls[0] and result["recall_at_10"] >= 0.9, recalls
