"""Scale: a synthetic S catalogue end to end (train, evaluate, rank, export, serve), and
exports whose graphs do not grow with the catalogue (its tables are variables and assets)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import load_config
from towerrec.evaluation.evaluate import evaluate_run
from towerrec.export.export import example_requests, export_models
from towerrec.training.rank import train_ranker
from towerrec.training.run import load_run
from towerrec.training.train import train

import numpy as np
import pytest
import tensorflow as tf

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large


def _synthetic_run(size: str, root: Path, encoder_dir: Path, **overrides):
    """A trained run on the synthetic catalogue of `size` (tiny BERT, one epoch)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(exist_ok=True)
    if not (root / "run" / "encoder").exists():
        (root / "run" / "encoder").symlink_to(encoder_dir)
    values = {"name": f"synthetic-{size}", "run_dir": str(root / "run"),
              "data.source": "synthetic", "data.size": size, "data.path": str(root / "data"),
              "encoder.sequence_length": 32, "training.epochs": 1, "ranker.epochs": 2}
    values.update(overrides)
    config = load_config(None, values)
    train(config, verbose=0)
    return config


@pytest.fixture(scope="module")
def small_run(tiny_encoder_dir, tmp_path_factory):
    """XS: 1k items (a tenth of S)."""
    return _synthetic_run("XS", tmp_path_factory.mktemp("synthetic-xs"), tiny_encoder_dir)


@pytest.fixture(scope="module")
def s_run(tiny_encoder_dir, tmp_path_factory):
    """S: 10k items, 100k interactions, trained, ranker trained, every model exported."""
    root = tmp_path_factory.mktemp("synthetic-s")
    config = _synthetic_run("S", root, tiny_encoder_dir)
    ranked = train_ranker(config, verbose=0)
    run = load_run(config)
    return run, ranked, export_models(run, root / "models")


def _graph_bytes(version: Path) -> int:
    return (version / "saved_model.pb").stat().st_size


def test_s_runs_end_to_end_and_learns(s_run):
    run, ranked, written = s_run
    assert len(run.catalogue["item_id"]) == 10_000
    assert sorted(written) == sorted(["query_tower", "candidate_tower",
                                      "retrieval_brute_force", "retrieval_scann", "ranker",
                                      "recommender", "recommender_scann"])
    metrics = evaluate_run(run)
    warm = metrics["warm"]
    # Every held-out user is evaluated; a random ranking of 10k items would give a
    # Recall@100 of about 0.01: the towers learned the topics.
    assert warm["users"] == run.splits["warm"]["user_id"].nunique()
    assert warm["recall_at_100"] > 0.05, warm
    assert ranked["retrieval+rerank"]["warm"]["users"] == warm["users"]


def test_s_exports_answer_in_a_fresh_process_as_in_this_one(s_run):
    """recommender and recommender_scann loaded by a new Python process give the answer of
    the same graphs called here (ScaNN's top 100 of 10k may differ from exact search in a
    few rows, so its answer is compared with itself, across processes)."""
    run, _, written = s_run
    request = example_requests(run)["recommender"]
    here = {}
    for name in ("recommender", "recommender_scann"):
        import scann  # noqa: F401  (registers the ScaNN ops)
        loaded = tf.saved_model.load(str(written[name]))
        answer = loaded.signatures["serving_default"](
            **{k: tf.constant(v) for k, v in request.items()})
        here[name] = {k: v.numpy().tolist() for k, v in answer.items()
                      if k in ("item_ids", "scores")}
    script = (
        "import json, sys, numpy as np\n"
        "import towerrec, tensorflow as tf, tensorflow_text, scann\n"
        "request = {k: np.array(v, dtype=object) for k, v in json.loads(sys.argv[2]).items()}\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "answer = model.signatures['serving_default'](**{k: tf.constant(v) for k, v in "
        "request.items()})\n"
        "print(json.dumps({k: v.numpy().tolist() for k, v in answer.items() "
        "if k in ('item_ids', 'scores')}, default=lambda b: b.decode()))\n")
    as_json = json.dumps({k: np.asarray(v).tolist() for k, v in request.items()},
                         default=lambda b: b.decode())
    for name in ("recommender", "recommender_scann"):
        out = subprocess.run([sys.executable, "-c", script, str(written[name]), as_json],
                             capture_output=True, text=True, timeout=300, check=True)
        fresh = json.loads(out.stdout.strip().splitlines()[-1])
        assert [[i.decode() for i in row] for row in here[name]["item_ids"]] == \
            fresh["item_ids"]
        np.testing.assert_allclose(here[name]["scores"], fresh["scores"], rtol=1e-5,
                                   atol=1e-6)


def test_export_graphs_do_not_grow_with_the_catalogue(small_run, s_run, tmp_path):
    """saved_model.pb of S (10k items) within 10% of XS's (1k): catalogue tables are
    variables and asset files, not graph constants."""
    small = export_models(load_run(small_run), tmp_path / "models",
                          models=["query_tower", "retrieval_brute_force", "retrieval_scann"])
    _, _, large = s_run
    for name, version in small.items():
        ratio = _graph_bytes(large[name]) / _graph_bytes(version)
        assert 0.9 <= ratio <= 1.1, (name, _graph_bytes(large[name]), _graph_bytes(version))
    assets = {p.name.split("-")[0] for p in (large["query_tower"] / "assets").iterdir()}
    assert {"user_ids", "catalogue_rows.tsv", "title_rows.tsv"} <= assets
