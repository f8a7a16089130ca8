"""Property-based: malformed requests of every kind (random input names, dtypes, shapes,
values and bytes over gRPC; random paths, JSON and garbage bodies over REST) never crash the
server, never get INTERNAL or UNKNOWN, never a 5xx; a good request still succeeds after."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.serving.client import RecommenderClient
from towerrec.serving.server import serve

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serving_helpers import tiny_export

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

MODEL = "query_tower"
NAMES = ["user_id", "history", "context_text"]
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}
# still_serving is function-scoped on purpose: it checks once, after all the examples.
FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def exported(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    return tiny_export(tiny_encoder_dir, movielens_slice, tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    config = tmp_path_factory.mktemp("fuzz") / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: '
                      f'"{exported["base"] / MODEL}" }} }}')
    with serve(model_config_file=str(config), grpc_port=0, rest_port=0,
               max_request_bytes=64 * 1024) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


@pytest.fixture()
def still_serving(server, exported):
    """After the examples: a good request over gRPC and over REST still succeeds."""
    yield
    request = exported["requests"][MODEL]
    with RecommenderClient(server.grpc_address) as client:
        assert client.predict(MODEL, request)["query_embedding"].shape == (2, 64)
    body = {"inputs": {k: v.astype(str).tolist() for k, v in request.items()}}
    assert _rest(server, "POST", f"/v1/models/{MODEL}:predict",
                 json.dumps(body).encode())[0] == 200


# --- gRPC -----------------------------------------------------------------------------
DTYPES = [types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32,
          types_pb2.DT_INT64, types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_RESOURCE,
          types_pb2.DT_VARIANT, types_pb2.DT_INVALID, 77]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    dims = draw(st.lists(st.one_of(st.integers(0, 4), st.sampled_from([-1, 2 ** 40])),
                         max_size=3))
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims],
        unknown_rank=draw(st.booleans()) and draw(st.booleans())))
    count = int(np.prod([max(d, 0) for d in dims])) if all(d <= 4 for d in dims) else 1
    size = draw(st.one_of(st.just(count), st.integers(0, 6)))  # mostly the right count
    values = draw(st.sampled_from(["string_val", "float_val", "int_val", "int64_val",
                                   "bool_val", "tensor_content"]))
    if values == "string_val":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=30), min_size=size,
                                              max_size=size)))
    elif values == "tensor_content":
        proto.tensor_content = draw(st.binary(max_size=40))
    elif values == "float_val":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), min_size=size,
                                             max_size=size)))
    elif values == "bool_val":
        proto.bool_val.extend(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    else:
        bound = 2 ** 31 - 1 if values == "int_val" else 2 ** 63 - 1
        getattr(proto, values).extend(draw(st.lists(st.integers(-bound, bound),
                                                    min_size=size, max_size=size)))
    return proto


@st.composite
def predict_requests(draw):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(st.one_of(st.just(MODEL), st.text(max_size=12)))
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.sampled_from([1, 0, -1, 2, 2 ** 62]))
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "x"]))
    if draw(st.integers(0, 9)) == 0:
        request.model_spec.version_label = draw(st.text(max_size=5))
    names = draw(st.lists(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)),
                          max_size=4, unique=True))
    for name in names:
        request.inputs[name].CopyFrom(draw(tensors()))
    if draw(st.integers(0, 9)) == 0:
        request.output_filter.append(draw(st.sampled_from(["query_embedding", "x"])))
    return request


@st.composite
def near_valid_requests(draw):
    """The right names, dtypes and ranks with random sizes and bytes (invalid UTF-8 too):
    most pass validation and reach the tokenizer."""
    n = draw(st.integers(0, 3))
    width = draw(st.integers(0, 3))
    text = st.binary(max_size=40)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    shapes = {"user_id": [n], "history": [n, width], "context_text": [n]}
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=3, unique=True)):
        shape = shapes[name]
        if draw(st.integers(0, 5)) == 0:
            shape = [draw(st.integers(0, 3))] + shape[1:]  # a different batch size
        values = draw(st.lists(text, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        request.inputs[name].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=values,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])))
    return request


def _predict(channel, request):
    try:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                           timeout=30)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details()


@settings(FUZZ, max_examples=120)
@given(request=predict_requests())
def test_grpc_random_requests(request, channel, still_serving):
    code, details = _predict(channel, request)
    assert code == grpc.StatusCode.OK or code in REFUSALS, (code, details)


@settings(FUZZ, max_examples=80)
@given(request=near_valid_requests())
def test_grpc_near_valid_requests(request, channel, still_serving):
    code, details = _predict(channel, request)
    assert code == grpc.StatusCode.OK or code in REFUSALS, (code, details)


@settings(FUZZ, max_examples=50)
@given(payload=st.binary(max_size=300),
       method=st.sampled_from(["/tensorflow.serving.PredictionService/Predict",
                               "/tensorflow.serving.PredictionService/GetModelMetadata",
                               "/tensorflow.serving.ModelService/GetModelStatus"]))
def test_grpc_garbage_messages(payload, method, channel, still_serving):
    call = channel.unary_unary(method)  # raw bytes in, raw bytes out
    try:
        call(payload, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in REFUSALS, (error.code(), error.details())


# --- REST -----------------------------------------------------------------------------
def _rest(server, method, path, body: bytes):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        connection.request(method, path, body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _check_rest(server, method, path, body):
    status, answer = _rest(server, method, path, body)
    assert status < 500, (status, answer)
    if status >= 400:
        assert isinstance(json.loads(answer)["error"], str)


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                        st.floats(), st.text(max_size=12))
json_values = st.recursive(
    json_leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(
            ["instances", "inputs", "signature_name", "b64"] + NAMES), st.text(max_size=6)),
            inner, max_size=4)),
    max_leaves=25)
paths = st.one_of(
    st.sampled_from([f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/1:predict",
                     f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/metadata",
                     f"/v1/models/{MODEL}/labels/x", "/v1/models/nope:predict",
                     f"/v1/models/{MODEL}:classify", "/monitoring/prometheus/metrics"]),
    st.text(max_size=30).map(lambda t: "/" + urllib.parse.quote(t, safe="/:")))


@settings(FUZZ, max_examples=100)
@given(method=st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE"]), path=paths,
       body=json_values)
def test_rest_random_json(method, path, body, server, still_serving):
    _check_rest(server, method, path, json.dumps(body).encode())


@st.composite
def near_valid_bodies(draw):
    leaf = st.one_of(st.text(max_size=10), st.integers(-5, 5), st.floats(),
                     st.fixed_dictionaries({"b64": st.text(max_size=8)}))
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3), max_leaves=12)
    names = draw(st.lists(st.sampled_from(NAMES + ["extra"]), max_size=4, unique=True))
    if draw(st.booleans()):
        return {"inputs": {name: draw(value) for name in names}}
    return {"instances": [{name: draw(value) for name in names}
                          for _ in range(draw(st.integers(0, 3)))]}


@settings(FUZZ, max_examples=60)
@given(body=near_valid_bodies())
def test_rest_near_valid_bodies(body, server, still_serving):
    _check_rest(server, "POST", f"/v1/models/{MODEL}:predict", json.dumps(body).encode())


@settings(FUZZ, max_examples=40)
@given(body=st.one_of(st.binary(max_size=200),
                      st.text(max_size=100).map(str.encode),
                      st.just(b"[" * 5000), st.just(b"x" * (64 * 1024 + 1))))
def test_rest_garbage_bodies(body, server, still_serving):
    _check_rest(server, "POST", f"/v1/models/{MODEL}:predict", body)
