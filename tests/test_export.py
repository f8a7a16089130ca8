"""Exports: TF Serving layout, documented signatures, the same answers in a new process."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import towers  # noqa: F401

from pipelines.evaluate import candidate_embeddings, query_embeddings, training_queries
from pipelines.export import example_requests, export_models
from pipelines.train import train
from tests.conftest import slice_config

MODELS = ["query_tower", "candidate_tower", "retrieval_brute_force", "retrieval_scann"]
K = 20

LOAD_AND_RUN = r"""
import pickle, sys
import tensorflow as tf, tensorflow_text, scann  # registers TFText and Scann ops
requests = pickle.load(open(sys.argv[1], "rb"))
out = {}
for name, (path, request) in requests.items():
    fn = tf.saved_model.load(path).signatures["serving_default"]
    answer = fn(**{k: tf.constant(v) for k, v in request.items()})
    out[name] = {k: v.numpy() for k, v in answer.items()}
pickle.dump(out, open(sys.argv[2], "wb"))
"""


@pytest.fixture(scope="module")
def exported(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export_run")
    run = train(slice_config(movielens_slice, run_dir, **{"training.epochs": 2}),
                encoder_dir=tiny_encoder_dir, verbose=0)
    base = run_dir / "models"
    return run, base, export_models(run, base, k=K)


def test_tf_serving_layout(exported):
    run, base, written = exported
    assert sorted(written) == sorted(MODELS)
    for name in MODELS:
        version = base / name / "1"
        assert written[name] == version
        assert (version / "saved_model.pb").exists() and (version / "variables").is_dir()
        assert (version / "assets.extra" / "tf_serving_warmup_requests").exists()
        assert not list((base / name).glob(".tmp-*"))
    again = export_models(run, base, k=K, models=["query_tower"])
    assert again["query_tower"] == base / "query_tower" / "2"
    assert (base / "query_tower" / "1" / "saved_model.pb").exists()  # kept


def test_fresh_process_returns_the_in_process_answers(exported, tmp_path):
    run, base, written = exported
    requests = example_requests(run)
    plan = {name: (str(written[name]), requests[name]) for name in MODELS}
    (tmp_path / "in.pkl").write_bytes(pickle.dumps(plan))
    subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "in.pkl"),
                    str(tmp_path / "out.pkl")], check=True, cwd=Path(__file__).parents[1])
    served = pickle.loads((tmp_path / "out.pkl").read_bytes())

    queries = training_queries(run, 2)  # what example_requests sends
    expected_query = query_embeddings(run, queries)[:2]
    np.testing.assert_allclose(served["query_tower"]["query_embedding"], expected_query,
                               atol=1e-5)
    np.testing.assert_allclose(served["candidate_tower"]["candidate_embedding"],
                               candidate_embeddings(run)[:2], atol=1e-5)
    scores = expected_query @ candidate_embeddings(run).T
    row_of = {item: row for row, item in enumerate(run.catalogue["item_id"])}
    for n, history in enumerate(queries.history[:2]):  # a user's history is not returned
        scores[n, [row_of[i] for i in history if i]] = -np.inf
    expected_top = np.argsort(-scores, axis=1)[:, :K]
    for name in ("retrieval_brute_force", "retrieval_scann"):
        ids = served[name]["item_ids"].astype(str)
        np.testing.assert_array_equal(ids, run.catalogue["item_id"][expected_top].astype(str))
        np.testing.assert_allclose(served[name]["scores"],
                                   np.take_along_axis(scores, expected_top, 1), atol=1e-4)


def _op_types(path: Path):
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def test_brute_force_export_has_no_scann_ops(exported):
    _, _, written = exported
    assert any("Scann" in op for op in _op_types(written["retrieval_scann"]))
    assert not any("Scann" in op for op in _op_types(written["retrieval_brute_force"]))


def test_signatures_are_documented(exported):
    """`saved_model_cli show --all` shows the names the README documents."""
    _, _, written = exported
    cli = Path(sys.executable).with_name("saved_model_cli")
    expected = {"query_tower": ["user_id", "history", "context_text", "query_embedding"],
                "candidate_tower": ["item_id", "item_text", "genres", "year",
                                    "candidate_embedding"],
                "retrieval_brute_force": ["user_id", "history", "context_text", "item_ids",
                                          "scores"]}
    for name, names in expected.items():
        shown = subprocess.run([str(cli), "show", "--dir", str(written[name]), "--all"],
                               capture_output=True, text=True, check=True).stdout
        assert "signature_def['serving_default']" in shown
        for tensor in names:
            assert f"['{tensor}'] tensor_info" in shown, (name, tensor)
