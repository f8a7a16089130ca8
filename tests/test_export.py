"""Exports: TF Serving layout, documented signatures, the same answers in a new process."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.evaluation.evaluate import (
    candidate_embeddings,
    query_embeddings,
    retrieval_scores,
    top_k,
)
from towerrec.export.export import MODELS, example_queries, example_requests, export_models
from towerrec.training.prior import served_candidates, served_queries
from towerrec.training.rank import (
    CandidateLists,
    history_rows,
    list_features,
    load_ranker,
    rerank,
    serving_features,
    train_ranker,
)
from towerrec.training.train import train

import numpy as np
import pytest

from tests.conftest import slice_config

K = 20

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

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
    (run_dir / "encoder").symlink_to(tiny_encoder_dir)
    # A fixed item prior: the exports search with it (towerrec.training.prior). The
    # default (attention) history encoder: test_a_mean_model_loads_as_trained covers the
    # mean's.
    config = slice_config(movielens_slice, run_dir, **{
        "training.epochs": 2, "prior.calibrate": False, "prior.weight_with_history": 0.1,
        "prior.weight_without_history": 0.3, "towers.history_encoder": "attention"})
    run = train(config, verbose=0)
    train_ranker(config, verbose=0)
    base = run_dir / "models"
    return run, base, export_models(run, base, k=K)


def test_catalogue_resolves_ids_and_titles(tmp_path):
    from towerrec.export.graphs import Catalogue

    import tensorflow as tf
    catalogue = Catalogue(["1", "2", "3"], ["Matrix, The (1999)", "Alien (1979)",
                                            "Alien (1986)"], tmp_path)
    history = tf.constant([["the matrix", "ALIEN", "Alien (1986)", "2", "nope", ""]])
    assert catalogue.resolve(history).numpy().tolist() == [[0, 1, 2, 1, -1, -1]]


def test_history_by_title_is_the_history_by_id(exported):
    run, _, written = exported
    import tensorflow as tf
    model = tf.saved_model.load(str(written["retrieval_brute_force"]))
    titles = run.dataset.items.set_index("item_id")["title"]
    by_id = [["50", "181"]]
    by_title = [[titles["50"].upper(), "  " + titles["181"].replace(" ", "  ") + " "]]
    answers = [model.signatures["serving_default"](
        user_id=tf.constant([""]), history=tf.constant(history),
        context_text=tf.constant(["a 30 year old man, engineer, Friday evening"]))
        for history in (by_id, by_title, [[""]])]
    np.testing.assert_array_equal(answers[0]["item_ids"], answers[1]["item_ids"])
    assert not np.array_equal(answers[0]["item_ids"], answers[2]["item_ids"])


def test_history_padding_side_does_not_matter(exported):
    """Left-padded (as in training), right-padded, wider than the tower's 20 items, with
    an unknown entry: the same last known items, the same answer."""
    run, _, written = exported
    import tensorflow as tf
    model = tf.saved_model.load(str(written["recommender"]))
    items = list(run.catalogue["item_id"][:21])  # the first falls out of a 20-item history
    histories = [[""] * 9 + items, items + [""] * 9, items[:10] + ["no such film"] + items[10:]]
    answers = [model.signatures["serving_default"](
        user_id=tf.constant([""]), history=tf.constant([history]),
        context_text=tf.constant(["a 30 year old woman, doctor, Sunday morning"]))
        for history in histories]
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer["item_ids"], answers[0]["item_ids"])
        np.testing.assert_allclose(answer["scores"], answers[0]["scores"], atol=1e-5)


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

    queries = example_queries(run)  # what example_requests sends
    expected_query = query_embeddings(run, queries)[:2]
    np.testing.assert_allclose(served["query_tower"]["query_embedding"], expected_query,
                               atol=1e-5)
    candidates = candidate_embeddings(run)
    np.testing.assert_allclose(served["candidate_tower"]["candidate_embedding"],
                               candidates[:2], atol=1e-5)
    # Retrieval: the towers' dot product + each request's weight * the items' log prior.
    has_history = (queries.history[:2] != "").any(axis=1)
    assert has_history.tolist() == [True, False]
    scale = run.prior.column_scale
    assert scale == pytest.approx(np.sqrt(0.1))  # the fixture's weight with a history
    log_prior = served_candidates(run, candidates)[:, -1] / scale
    assert np.ptp(log_prior) > 1.0  # popular and unpopular items differ
    scores = (served_queries(run, expected_query, has_history)
              @ served_candidates(run, candidates).T)
    np.testing.assert_allclose(
        scores, expected_query @ candidates.T + np.array([[0.1], [0.3]]) * log_prior,
        atol=1e-5)
    # ... which is what evaluation scores, for requests asked after all training data.
    assert queries.time is None
    np.testing.assert_allclose(scores, retrieval_scores(run, queries)[0:2], atol=1e-4)
    history = history_rows(run, queries.history[:2])
    exclude = [h[h >= 0] for h in history]  # a request's history is not returned
    expected_top = top_k(scores, exclude, K)
    expected_ids = run.catalogue["item_id"][expected_top].astype(str)
    for name in ("retrieval_brute_force", "retrieval_scann"):
        np.testing.assert_array_equal(served[name]["item_ids"].astype(str), expected_ids)
        np.testing.assert_allclose(served[name]["scores"],
                                   np.take_along_axis(scores, expected_top, 1), atol=1e-4)

    ranker, features = load_ranker(run), serving_features(run)
    asked = requests["ranker"]["item_ids"].astype(str)
    row_of = {item: row for row, item in enumerate(run.catalogue["item_id"])}
    asked_rows = np.vectorize(row_of.get)(asked)
    asked_lists = CandidateLists(asked_rows, np.take_along_axis(scores, asked_rows, 1),
                                 history, np.zeros(asked_rows.shape, np.float32))
    np.testing.assert_allclose(
        served["ranker"]["scores"],
        ranker(list_features(features, asked_lists), training=False).numpy(), atol=1e-4)

    lists = CandidateLists(expected_top, np.take_along_axis(scores, expected_top, 1),
                           history, np.zeros(expected_top.shape, np.float32))
    recommended = rerank(ranker, features, lists)[:, :run.config.ranker.recommended]
    np.testing.assert_array_equal(served["recommender"]["item_ids"].astype(str),
                                  run.catalogue["item_id"][recommended].astype(str))
    np.testing.assert_array_equal(served["recommender"]["titles"].astype(str),
                                  run.dataset.items["title"].to_numpy()[recommended])
    np.testing.assert_array_equal(served["recommender"]["is_new"],
                                  features.is_new(recommended).numpy())


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
    for name in ("retrieval_brute_force", "ranker", "recommender"):  # stock TF Serving
        assert not any("Scann" in op for op in _op_types(written[name])), name


def test_signatures_are_documented(exported):
    """Each export's serving_default signature has the names the README documents, as
    `saved_model_cli show --all` shows them (run once: each run starts TensorFlow; the
    others read the same signature_def from saved_model.pb)."""
    from tensorflow.core.protobuf import saved_model_pb2

    _, _, written = exported
    cli = Path(sys.executable).with_name("saved_model_cli")
    expected = {"query_tower": ["user_id", "history", "context_text", "query_embedding"],
                "candidate_tower": ["item_id", "item_text", "genres", "year",
                                    "candidate_embedding"],
                "retrieval_brute_force": ["user_id", "history", "context_text", "item_ids",
                                          "scores"],
                "ranker": ["user_id", "history", "context_text", "item_ids", "scores"],
                "recommender": ["user_id", "history", "context_text", "item_ids", "titles",
                                "scores", "is_new"]}
    shown = subprocess.run([str(cli), "show", "--dir", str(written["recommender"]), "--all"],
                           capture_output=True, text=True, check=True).stdout
    assert "signature_def['serving_default']" in shown
    for tensor in expected["recommender"]:
        assert f"['{tensor}'] tensor_info" in shown, tensor
    for name, names in expected.items():
        saved = saved_model_pb2.SavedModel.FromString(
            (written[name] / "saved_model.pb").read_bytes())
        signature = saved.meta_graphs[0].signature_def["serving_default"]
        assert set(names) == set(signature.inputs) | set(signature.outputs), name


def test_a_mean_model_loads_as_trained(tiny_encoder_dir, movielens_slice, tmp_path):
    """A model trained with the mean (as every model before `towers.history_encoder`
    existed): loaded under today's default config, it is rebuilt with the mean and gives
    the same query embeddings, instead of a half-restored attention tower."""
    import json

    from towerrec.training.run import load_run

    (tmp_path / "encoder").symlink_to(tiny_encoder_dir)
    config = slice_config(movielens_slice, tmp_path, **{
        "training.epochs": 1, "prior.calibrate": False, "towers.history_encoder": "mean"})
    run = train(config, verbose=0)
    queries = example_queries(run)
    expected = query_embeddings(run, queries)
    saved = tmp_path / "model" / "config.json"
    old = json.loads(saved.read_text())
    del old["towers"]["history_encoder"]
    saved.write_text(json.dumps(old))

    default = slice_config(movielens_slice, tmp_path, **{
        "prior.calibrate": False, "towers.history_encoder": "attention"})  # the default
    assert default.towers.history_encoder == "attention"
    loaded = load_run(default)
    assert loaded.config.towers.history_encoder == "mean"
    assert loaded.model.query_tower.history_encoder is None
    np.testing.assert_allclose(query_embeddings(loaded, queries), expected, atol=1e-6)


def test_the_index_and_the_exports_share_one_scann_build(exported, tmp_path, monkeypatch):
    from towerrec.export import index as index_module
    from towerrec.export.export import index_and_export

    import tensorflow as tf

    run, _, _ = exported
    builds = []
    build = index_module.build_scann_state
    monkeypatch.setattr(index_module, "build_scann_state",
                        lambda *args: builds.append(args) or build(*args))
    built = index_and_export(run, candidate_embeddings(run), tmp_path / "models")
    assert len(builds) == 1
    # The served searcher asks for k + history_length neighbours; the index was built so.
    assert built.index["k"] == min(run.config.ranker.retrieved
                                   + run.config.towers.history_length,
                                   len(run.catalogue["item_id"]))
    stored = np.load(run.config.run_path / "index" / "scann" / "dataset.npy")
    served = tf.saved_model.load(str(built.exports["retrieval_scann"]))
    np.testing.assert_array_equal(served.scann_state.dataset.numpy(), stored)
