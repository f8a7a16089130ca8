"""The model server end to end on loopback: every export answers over gRPC and REST exactly
as the SavedModel does in-process; metadata and status as TF Serving gives them; bad requests
get the right codes and the server keeps serving; batching; `towerrec query`; SIGTERM."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.pipelines.cli import main
from towerrec.serving.client import RecommenderClient
from towerrec.serving.errors import ServingError
from towerrec.serving.server import serve
from towerrec.serving.tensors import from_ndarray

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.serving_helpers import (
    as_json,
    assert_same_outputs,
    http,
    in_process,
    metric,
    tiny_export,
)

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

MAX_REQUEST_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def exported(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    return tiny_export(tiny_encoder_dir, movielens_slice, tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported):
    with serve(model_base_path=str(exported["base"]), grpc_port=0, rest_port=0,
               max_request_bytes=MAX_REQUEST_BYTES) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with RecommenderClient(server.grpc_address) as client:
        yield client


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_address, options=[
        ("grpc.max_send_message_length", 4 * MAX_REQUEST_BYTES)])
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def _rows(predictions, names):
    """The row format's answer as columns."""
    if len(names) == 1:
        return {names[0]: np.array(predictions, dtype=object if isinstance(
            np.ravel(predictions)[0], str) else np.float32)}
    return {n: np.array([row[n] for row in predictions]) for n in names}


def test_every_export_answers_like_the_saved_model_over_grpc_and_rest(exported, server,
                                                                      client):
    assert sorted(server.manager.names()) == sorted(exported["written"])
    for name, path in exported["written"].items():
        request = exported["requests"][name]
        want = in_process(path, request)

        answer = client.predict(name, request)
        assert (answer.model, answer.version) == (name, int(path.name))
        assert_same_outputs(answer, want)

        url = f"{server.rest_url}/v1/models/{name}:predict"
        status, body = http("POST", url, {"inputs": as_json(request)})
        assert status == 200, body
        columns = body["outputs"] if len(want) > 1 else {next(iter(want)): body["outputs"]}
        assert_same_outputs({k: np.array(v) for k, v in columns.items()}, want)

        instances = [{k: v[i] for k, v in as_json(request).items()}
                     for i in range(len(next(iter(request.values()))))]
        status, body = http("POST", f"{server.rest_url}/v1/models/{name}/versions/"
                            f"{path.name}:predict", {"instances": instances})
        assert status == 200, body
        assert_same_outputs(_rows(body["predictions"], sorted(want)), want)


def test_metadata_and_status_as_tf_serving_gives_them(exported, server, stubs):
    predict, models = stubs
    for name, path in exported["written"].items():
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        request.model_spec.name = name
        response = predict.GetModelMetadata(request)
        assert response.model_spec.version.value == int(path.name)
        defs = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(defs)
        inputs = defs.signature_def["serving_default"].inputs
        assert sorted(inputs) == sorted(exported["requests"][name])
        status, body = http("GET", f"{server.rest_url}/v1/models/{name}/metadata")
        assert status == 200 and body["model_spec"]["version"] == path.name
        rest_inputs = body["metadata"]["signature_def"]["signature_def"]["serving_default"][
            "inputs"]
        assert sorted(rest_inputs) == sorted(inputs)

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        (version,) = models.GetModelStatus(request).model_version_status
        assert version.version == int(path.name)
        assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert version.status.error_code == 0
        status, body = http("GET", f"{server.rest_url}/v1/models/{name}")
        assert status == 200 and body == {"model_version_status": [{
            "version": path.name, "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}
    assert "user_id" in str(inputs)  # the query models' signature


def _query_request(exported, model="query_tower", **changes):
    """The example query request with inputs replaced (None drops one)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in {**exported["requests"]["query_tower"], **changes}.items():
        if value is not None:
            request.inputs[name].CopyFrom(from_ndarray(np.asarray(value)))
    return request


BAD = {  # what is wrong -> (gRPC request changes, expected code, words of the message)
    "float for a string": (dict(user_id=np.ones(2, np.float32)), "INVALID_ARGUMENT",
                           "'user_id' must be string, got float32"),
    "wrong rank": (dict(history=np.array([b"1", b"2"], dtype=object)), "INVALID_ARGUMENT",
                   "'history' has shape [2], expected string [?, ?]"),
    "batch sizes differ": (dict(user_id=np.array([b"1"], dtype=object)), "INVALID_ARGUMENT",
                           "batch size"),
    "missing input": (dict(context_text=None), "INVALID_ARGUMENT",
                      "missing input 'context_text'"),
    "unknown input": (dict(colour=np.array([b"red"], dtype=object)), "INVALID_ARGUMENT",
                      "unknown input 'colour'"),
    "unknown model": (dict(model="no_such_model"), "NOT_FOUND", "'no_such_model' is not"),
    "oversized": (dict(context_text=np.array([b"x" * MAX_REQUEST_BYTES] * 2, dtype=object)),
                  "RESOURCE_EXHAUSTED", ""),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grpc_requests_get_the_right_status_and_the_server_keeps_serving(
        case, exported, stubs, client):
    changes, code, words = BAD[case]
    request = _query_request(exported, **changes)
    with pytest.raises(grpc.RpcError) as error:
        stubs[0].Predict(request, timeout=30)
    assert error.value.code().name == code, error.value.details()
    assert words in error.value.details()
    assert client.predict("query_tower", exported["requests"]["query_tower"])


def test_other_grpc_errors(exported, stubs, client):
    predict, models = stubs
    request = _query_request(exported)
    request.model_spec.version.value = 99
    for call in (predict.Predict, predict.GetModelMetadata):
        with pytest.raises(grpc.RpcError) as error:
            call(request if call == predict.Predict else
                 get_model_metadata_pb2.GetModelMetadataRequest(
                     model_spec=request.model_spec, metadata_field=["signature_def"]))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version 99 is not available (available: 1)" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec=request.model_spec))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    request = _query_request(exported)
    request.model_spec.signature_name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        predict.Predict(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no signature 'nope'" in error.value.details()
    with pytest.raises(ServingError) as error:  # the client's error type
        client.predict("query_tower", {})
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no inputs" in error.value.message


@pytest.mark.parametrize("path, body, status, words", [
    ("query_tower:predict", {"inputs": {"user_id": [1.5, 2], "history": [["1"], ["2"]],
                                        "context_text": ["a", "b"]}}, 400,
     "'user_id' must be string, got float"),
    ("candidate_tower:predict", {"instances": [{"item_id": "1", "item_text": "t",
                                                "genres": "Drama", "year": "1990"}]}, 400,
     "'year' must be float32, got str"),
    ("query_tower:predict", {"inputs": {"user_id": ["1"], "history": ["1"],
                                        "context_text": ["a"]}}, 400,
     "'history' must be nested lists like string [?, ?]"),
    ("query_tower:predict", {"inputs": {"user_id": ["1", "2"], "history": [["1"]],
                                        "context_text": ["a", "b"]}}, 400, "batch size"),
    ("query_tower:predict", {"inputs": {"user_id": ["1"], "history": [["1"]]}}, 400,
     "missing input 'context_text'"),
    ("query_tower:predict", {"inputs": {}}, 400, "no inputs"),
    ("query_tower:predict", "not json", 400, "not JSON"),
    ("query_tower:predict", {"instances": [{"user_id": "1", "history": ["1"],
                                            "context_text": "x" * MAX_REQUEST_BYTES}]},
     413, "limit"),
    ("no_such_model:predict", {"instances": [1]}, 404, "'no_such_model' is not served"),
    ("query_tower/versions/99:predict", {"instances": [1]}, 404, "version 99"),
    ("query_tower/versions/99", None, 404, "no version 99"),
    ("query_tower/oops", None, 404, "no such path"),
])
def test_bad_rest_requests_get_the_right_status(path, body, status, words, server,
                                                 exported):
    url = f"{server.rest_url}/v1/models/{path}"
    if body == "not json":
        got, answer = http("POST", url, raw=b"{'instances': [}")
    else:
        got, answer = http("POST" if path.endswith(":predict") else "GET", url, body)
    assert got == status and words in answer["error"], answer
    good = {"inputs": as_json(exported["requests"]["query_tower"])}
    assert http("POST", f"{server.rest_url}/v1/models/query_tower:predict", good)[0] == 200


def test_failures_inside_tensorflow_are_invalid_argument(tmp_path):
    """A model whose graph rejects some valid-looking inputs: the client gets TF's one line
    (no traceback, not INTERNAL) and the server keeps serving."""
    import tensorflow as tf

    class Pairs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, "x")])
        def serving_default(self, x):
            return {"pairs": tf.reshape(x, [-1, 2])}

    module = Pairs()
    tf.saved_model.save(module, str(tmp_path / "pairs" / "1"),
                        signatures={"serving_default": module.serving_default})
    with serve(model_base_path=str(tmp_path), grpc_port=0, rest_port=0) as server, \
            RecommenderClient(server.grpc_address) as client:
        with pytest.raises(ServingError) as error:
            client.predict("pairs", {"x": [1.0, 2.0, 3.0]})
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "reshape" in error.value.message.lower()
        assert "\n" not in error.value.message and "Traceback" not in error.value.message
        status, body = http("POST", f"{server.rest_url}/v1/models/pairs:predict",
                            {"instances": [1.0, 2.0, 3.0]})
        assert status == 400 and "reshape" in body["error"].lower()
        assert client.predict("pairs", {"x": [1, 2]})["pairs"].tolist() == [[1.0, 2.0]]


def test_metrics_endpoint(server, client, exported):
    client.predict("query_tower", exported["requests"]["query_tower"])
    status, text = http("GET", f"{server.rest_url}/monitoring/prometheus/metrics")
    assert status == 200
    assert ('towerrec_serving_requests_total{api="predict",model="query_tower",'
            'protocol="grpc",status="OK"}') in text
    assert 'towerrec_serving_loaded_versions{model="query_tower"} 1.0' in text
    assert "towerrec_serving_request_latency_seconds_bucket" in text
    assert metric(server, "towerrec_serving_request_errors_total", model="_unknown",
                  protocol="grpc", api="predict", status="NOT_FOUND") >= 1


def _distinct_queries(exported, count, width):
    """`count` one-row query requests that differ in every input."""
    base = exported["requests"]["query_tower"]
    items = base["history"][0][-width:]
    return [{"user_id": np.array([base["user_id"][i % 2]], dtype=object),
             "history": np.array([np.roll(items, i)], dtype=object),
             "context_text": np.array([b"request %d" % i], dtype=object)}
            for i in range(count)]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(exported, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "query_tower" base_path: '
                      f'"{exported["base"] / "query_tower"}" model_platform: "tensorflow" '
                      f'version_labels {{ key: "stable" value: 1 }} }} }}')
    path = exported["written"]["query_tower"]
    # Histories of width 3 and 5, two requests of each, batches of 4 rows: padded to one
    # width, all four fill one batch (the 60 s timeout is only a safety net; without the
    # padding each width would wait for it in a queue of its own).
    requests = _distinct_queries(exported, 2, 3) + _distinct_queries(exported, 2, 5)
    wants = [in_process(path, r) for r in requests]
    with serve(model_config_file=str(config), grpc_port=0, rest_port=-1,
               enable_batching=True, max_batch_size=4, batch_timeout_micros=60_000_000
               ) as server, RecommenderClient(server.grpc_address) as client:
        assert server.rest_url is None
        answers = [None] * len(requests)

        def ask(i):
            try:
                answers[i] = client.predict("query_tower", requests[i])
            except Exception as error:  # reported below
                answers[i] = error

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for answer, want in zip(answers, wants):
            assert not isinstance(answer, Exception), answer
            assert_same_outputs(answer, want)
        labels = {"model": "query_tower"}
        assert metric(server, "towerrec_serving_batch_requests_count", **labels) == 1
        assert metric(server, "towerrec_serving_batch_requests_sum", **labels) == 4
        assert metric(server, "towerrec_serving_batch_rows_sum", **labels) == 4

        # A version label from models.config names a version (4 rows: it runs unbatched).
        same_width = _distinct_queries(exported, 4, 3)
        four = {n: np.concatenate([r[n] for r in same_width]) for n in same_width[0]}
        with grpc.insecure_channel(server.grpc_address) as channel:
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                _labelled(four, "stable"))
        assert answer.model_spec.version.value == 1

        # Stopping lets a request in flight finish: this one waits in a batch queue (one row
        # of four, a minute from its timeout) when stop() is called.
        late = threading.Thread(target=ask, args=(0,))
        answers[0] = None
        late.start()
        while server.predictor.batcher.pending() == 0:
            assert late.is_alive()
        server.stop()
        late.join(60)
        assert_same_outputs(answers[0], wants[0])


def _labelled(inputs, label):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "query_tower"
    request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(from_ndarray(value))
    return request


def test_towerrec_query_prints_the_top_items(exported, server, capsys):
    request = {"user_id": np.array([b"42"], dtype=object),
               "history": np.array([[b"50", b"181"]], dtype=object),
               "context_text": np.array([b"something funny for tonight"], dtype=object)}
    want = in_process(exported["written"]["retrieval_brute_force"], request)
    code = main(["query", "--address", server.grpc_address, "--model",
                 "retrieval_brute_force", "--user", "42", "--history", " 50 ;181; ",
                 "--context", "something funny for tonight", "--top", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[1].split() == ["rank", "item", "id", "score"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r[1] for r in rows] == want["item_ids"][0][:5].astype(str).tolist()
    np.testing.assert_allclose([float(r[2]) for r in rows], want["scores"][0][:5], atol=1e-4)

    assert main(["query", "--address", server.grpc_address]) == 2  # no 'recommender' yet
    error = capsys.readouterr().err.strip()
    assert error.startswith("towerrec query: error: NOT_FOUND: model 'recommender'")
    assert "\n" not in error


def test_towerrec_query_when_the_server_is_down(capsys):
    assert main(["query", "--address", "127.0.0.1:1", "--timeout", "5"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("towerrec query: error: UNAVAILABLE: cannot reach 127.0.0.1:1")
    assert "\n" not in error


def test_towerrec_serve_stops_gracefully_on_sigterm(exported, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "query_tower" base_path: '
                      f'"{exported["base"] / "query_tower"}" }} }}')
    process = subprocess.Popen(
        [sys.executable, "-m", "towerrec.pipelines.cli", "serve", "--model-config-file",
         str(config), "--port", "0", "--rest-api-port", "0"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).parents[1])
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    try:
        first = lines.get(timeout=180)  # "serving 1 model(s) (...); gRPC host:port, REST ..."
        address = first.split("gRPC ")[1].split(",")[0]
        with RecommenderClient(address) as client:
            assert client.status("query_tower")[0]["state"] == "AVAILABLE"
            assert client.predict("query_tower", exported["requests"]["query_tower"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert lines.get(timeout=10).startswith("stopping")
    finally:
        if process.poll() is None:
            process.kill()
