"""Serving parts that need no model: tensor decoding, validation, REST JSON, batching,
error messages, models.config."""
from __future__ import annotations

import threading

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.serving.batching import BatchScheduler
from towerrec.serving.errors import ServingError, first_line
from towerrec.serving.model_config import ModelConfigError, read_model_config
from towerrec.serving.rest_json import parse_request, to_json
from towerrec.serving.tensors import from_ndarray, to_ndarray
from towerrec.serving.validation import InputSpec, validate

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

QUERY = {"user_id": InputSpec("user_id", "string", (None,)),
         "history": InputSpec("history", "string", (None, None)),
         "context_text": InputSpec("context_text", "string", (None,))}
YEAR = {"year": InputSpec("year", "float32", (None,))}


def test_tensor_round_trip():
    for array in (np.array([[b"a", b"\xff\x00"]], dtype=object),
                  np.arange(6, dtype=np.float32).reshape(2, 3),
                  np.array([1, -2], dtype=np.int64), np.array([True, False])):
        back = to_ndarray(from_ndarray(array))
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    assert to_ndarray(from_ndarray(["é"])).tolist() == ["é".encode()]


@pytest.mark.parametrize("proto, message", [
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE), "not a supported dtype"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0],
                            tensor_shape={"dim": [{"size": 2 ** 40}]}), "1 value(s)"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"abc",
                            tensor_shape={"dim": [{"size": 1}]}), "tensor_content has 3"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a"],
                            tensor_shape={"dim": [{"size": -1}]}), "negative dimension"),
])
def test_malformed_tensors_are_refused_with_the_input_named(proto, message):
    with pytest.raises(ValueError, match="input 'x'") as error:
        to_ndarray(proto, "x")
    assert message in str(error.value)


def _strings(*shape):
    return np.full(shape, b"a", dtype=object)


@pytest.mark.parametrize("arrays, message", [
    ({}, "no inputs; expected"),
    ({"user_id": _strings(1), "history": _strings(1, 2), "context_text": _strings(1),
      "extra": _strings(1)}, "unknown input 'extra'"),
    ({"user_id": _strings(1), "history": _strings(1, 2)}, "missing input 'context_text'"),
    ({"user_id": np.ones(1, np.float32), "history": _strings(1, 2),
      "context_text": _strings(1)}, "input 'user_id' must be string, got float32"),
    ({"user_id": _strings(1), "history": _strings(1), "context_text": _strings(1)},
     "input 'history' has shape [1], expected string [?, ?]"),
    ({"user_id": _strings(2), "history": _strings(1, 3), "context_text": _strings(2)},
     "disagree on the batch size"),
])
def test_validation_names_the_input_and_what_was_expected(arrays, message):
    with pytest.raises(ServingError) as error:
        validate(QUERY, arrays)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.message
    validate(QUERY, {"user_id": _strings(2), "history": _strings(2, 3),
                     "context_text": _strings(2)})


def test_rest_json_row_and_columnar_formats():
    rows = {"instances": [{"user_id": "1", "history": ["a", "b"], "context_text": "x"},
                          {"user_id": "2", "history": ["c", "d"], "context_text": "y"}]}
    form, arrays = parse_request(rows, QUERY)
    assert form == "row" and arrays["history"].shape == (2, 2)
    assert arrays["user_id"].tolist() == [b"1", b"2"]
    form, arrays = parse_request({"inputs": {"user_id": [{"b64": "/w=="}]}}, QUERY)
    assert form == "columnar" and arrays["user_id"].tolist() == [b"\xff"]
    _, arrays = parse_request({"instances": [1990, 2001.5]}, YEAR)  # one input: bare values
    assert arrays["year"].dtype == np.float32 and arrays["year"].tolist() == [1990, 2001.5]
    outputs = {"item_ids": np.array([[b"1", b"2"]], dtype=object),
               "scores": np.array([[0.5, 0.25]], np.float32)}
    assert to_json(outputs, "row") == {
        "predictions": [{"item_ids": ["1", "2"], "scores": [0.5, 0.25]}]}
    assert to_json(outputs, "columnar") == {
        "outputs": {"item_ids": [["1", "2"]], "scores": [[0.5, 0.25]]}}
    assert to_json({"scores": outputs["scores"]}, "columnar") == {"outputs": [[0.5, 0.25]]}


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"),
    ({"instances": [], "inputs": {}}, "exactly one of"),
    ({"instances": []}, "non-empty list"),
    ({"inputs": {"history": [["a"], ["b", "c"]]}}, "ragged"),
    ({"inputs": {"user_id": [1]}}, "must be string, got int"),
    ({"inputs": {"user_id": "a"}}, "must be nested lists like string"),
    ({"inputs": {"user_id": [["a"]]}}, "nested deeper than string"),
    ({"instances": [{"user_id": "1"}, "2"]}, "mixes named"),
    ({"instances": [{"user_id": "1"}, {"history": ["2"]}]}, "instance 1 has inputs"),
    ({"inputs": ["a"]}, "needs a signature with one input"),
    ({"inputs": {"user_id": [{"b64": "%%%"}]}}, "invalid base64"),
])
def test_rest_json_errors_say_what_is_wrong(body, message):
    with pytest.raises(ValueError, match=message):
        parse_request(body, QUERY)
    with pytest.raises(ValueError, match="must be float32, got str"):
        parse_request({"inputs": {"year": ["1990"]}}, YEAR)


def _double(inputs):
    if (inputs["x"] < 0).any():
        raise ValueError("negative")
    return {"y": inputs["x"] * 2, "n": np.full(len(inputs["x"]), len(inputs["x"]))}


def _concurrently(scheduler, requests):
    answers = [None] * len(requests)

    def call(i):
        try:
            answers[i] = scheduler.run("model", _double, requests[i])
        except Exception as error:
            answers[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_batching_merges_same_shaped_requests_and_returns_each_its_rows():
    batches = []
    scheduler = BatchScheduler(max_batch_size=6, batch_timeout_s=30,
                               on_batch=lambda key, n, rows: batches.append((n, rows)))
    try:
        # Two shapes (trailing dim 2 and 3), 6 rows of each: two full batches; a batch
        # runs only when full (the timeout is far away), so each merges 3 requests.
        requests = [{"x": np.full((2, 2 + i % 2), float(i), np.float32)} for i in range(6)]
        answers = _concurrently(scheduler, requests)
    finally:
        scheduler.close()
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer["y"], request["x"] * 2)
        assert answer["n"].tolist() == [6, 6]  # it ran in a merged batch of 6 rows
    assert sorted(batches) == [(3, 6), (3, 6)]


def test_a_failing_request_fails_alone_and_close_runs_what_is_queued():
    scheduler = BatchScheduler(max_batch_size=3, batch_timeout_s=30)
    requests = [{"x": np.array([1.0])}, {"x": np.array([-1.0])}, {"x": np.array([2.0])}]
    answers = _concurrently(scheduler, requests)
    assert isinstance(answers[1], ValueError)
    assert answers[0]["y"].tolist() == [2.0] and answers[2]["y"].tolist() == [4.0]
    waiting = threading.Thread(target=lambda: answers.append(
        scheduler.run("model", _double, {"x": np.array([5.0])})))
    waiting.start()  # 1 row of 3: it would wait 30 s for company
    while scheduler.pending() == 0:
        pass
    scheduler.close()
    waiting.join(10)
    assert answers[-1]["y"].tolist() == [10.0]


def test_first_line_of_a_tf_error():
    message = ("Graph execution error:\n\nDetected at node query_tower/concat defined at "
               "(most recent call last):\n<stack traces unavailable>\nConcatOp : Dimension 0 "
               "in both shapes must be equal\n\t [[{{node query_tower/concat}}]] "
               "[Op:__inference_signature_wrapper_1]")
    assert first_line(RuntimeError(message)) == (
        "ConcatOp : Dimension 0 in both shapes must be equal")


def test_models_config(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("""model_config_list {
      config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
      config { name: "b" base_path: "/m/b"
               model_version_policy { specific { versions: 2 versions: 3 } }
               version_labels { key: "stable" value: 2 } }
      config { name: "c" base_path: "/m/c" model_version_policy { all {} } }
    }""")
    a, b, c = read_model_config(config)
    assert (a.name, a.num_versions, a.candidates([1, 3, 2])) == ("a", 1, [3, 2, 1])
    assert b.candidates([1, 2, 3, 4]) == [3, 2] and b.labels == {"stable": 2}
    assert c.num_versions is None
    config.write_text("model_config_list { config { name: 'a' } }")
    with pytest.raises(ModelConfigError, match="name and a base_path"):
        read_model_config(config)
    config.write_text("not a proto {")
    with pytest.raises(ModelConfigError, match="not a ModelServerConfig"):
        read_model_config(config)
