"""Regression tests for the defects a hostile probe of `towerrec serve` found (issue 14):
request limits, chunks and deadlines; complete responses on stop; keep-alive, backlog and
idle timeouts; JSON for the standard library's own refusals; version folders as TF Serving
names them; a failing listing or load never unloads or hangs a model; port checks."""
from __future__ import annotations

import http.client as http_client
import json
import logging
import socket
import threading
import time
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.pipelines.cli import main
from towerrec.serving import manager as manager_module
from towerrec.serving import rest
from towerrec.serving.client import RecommenderClient
from towerrec.serving.errors import ServingError
from towerrec.serving.manager import END, ModelManager, versions_on_disk
from towerrec.serving.model_config import ModelSource
from towerrec.serving.models import Signature
from towerrec.serving.options import ServerOptions
from towerrec.serving.predictor import Predictor, RequestLimits
from towerrec.serving.server import serve

import grpc
import numpy as np
import pytest

from tests.serving_helpers import assert_same_outputs, http, in_process, tiny_export

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large


@pytest.fixture(scope="module")
def exported(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    return tiny_export(tiny_encoder_dir, movielens_slice, tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported):
    """Small limits, so that the tests can pass them: 8 rows, 30 values a row, chunks of
    4 rows, idle REST connections closed after a second."""
    with serve(model_base_path=str(exported["base"]), grpc_port=0, rest_port=0,
               max_rows_per_request=8, max_values_per_row=30, max_batch_size=4,
               rest_idle_timeout_seconds=1.0) as running:
        yield running


def rows(request: dict, n: int) -> dict:
    """A request of n rows made of the example request's first row."""
    return {k: np.repeat(v[:1], n, axis=0) for k, v in request.items()}


def raw_http(server, data: bytes, timeout: float = 10.0) -> bytes:
    """What the REST port answers to raw bytes, until it closes the connection."""
    with socket.create_connection((server.host, server.rest_port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk


# --- 1: one request may not take the server ---------------------------------------------

def test_a_request_over_the_row_limit_is_resource_exhausted(exported, server):
    request = rows(exported["requests"]["query_tower"], 9)
    with RecommenderClient(server.grpc_address) as client:
        with pytest.raises(ServingError) as error:
            client.predict("query_tower", request)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "9 rows, more than the limit of 8" in error.value.message
    status, body = http("POST", f"{server.rest_url}/v1/models/query_tower:predict",
                        {"inputs": {k: (v.astype(str) if v.dtype.kind in "SO" else v).tolist()
                                    for k, v in request.items()}})
    assert status == 413 and "more than the limit of 8" in body["error"]


def test_a_row_wider_than_the_limit_is_refused(exported, server):
    request = dict(exported["requests"]["query_tower"])  # e.g. the ranker's candidates
    request["history"] = np.repeat(request["history"][:, :1], 31, axis=1)
    with RecommenderClient(server.grpc_address) as client:
        with pytest.raises(ServingError) as error:
            client.predict("query_tower", request)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'history' has 31 values per row" in error.value.message


def test_a_request_runs_in_chunks_and_answers_as_one_call(exported, server):
    request = rows(exported["requests"]["retrieval_brute_force"], 7)  # chunks of 4 and 3
    with RecommenderClient(server.grpc_address) as client:
        served = client.predict("retrieval_brute_force", request)
    assert_same_outputs(served, in_process(exported["written"]["retrieval_brute_force"],
                                           request))


def test_a_request_past_its_deadline_stops_between_chunks(exported):
    with serve(model_base_path=str(exported["base"]), grpc_port=0, rest_port=-1,
               max_batch_size=2, request_timeout_seconds=1e-6) as server:
        with RecommenderClient(server.grpc_address) as client:
            one_chunk = client.predict("query_tower",
                                       rows(exported["requests"]["query_tower"], 2))
            with pytest.raises(ServingError) as error:
                client.predict("query_tower", rows(exported["requests"]["query_tower"], 6))
    # A request of one chunk always runs.
    assert [len(v) for v in one_chunk.values()] == [2] * len(one_chunk)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "after 2 of 6 rows" in error.value.message


def test_a_client_deadline_already_passed_is_deadline_exceeded(exported, server):
    servable, signature = server.predictor.resolve("query_tower", None, None, "")
    with pytest.raises(ServingError) as error:
        server.predictor.predict(servable, signature, exported["requests"]["query_tower"],
                                 client_seconds=0.0)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_unbatched_signature_is_held_to_the_row_limit(tmp_path):
    import tensorflow as tf

    module = tf.Module()  # an input with a fixed first dimension: not batchable
    module.double = tf.function(lambda values: {"doubled": values * 2},
                                input_signature=[tf.TensorSpec([9], tf.float32, "values")])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.double})
    signature = Signature("serving_default",
                          tf.saved_model.load(str(tmp_path)).signatures["serving_default"])
    assert not signature.batchable
    predictor = Predictor(manager=None, limits=RequestLimits(max_rows=8))
    with pytest.raises(ServingError) as error:
        predictor.predict(None, signature, {"values": np.ones(9, np.float32)})
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'values' has 9 rows, more than the limit of 8" in error.value.message
    allowed = Predictor(manager=None, limits=RequestLimits(max_rows=9))
    np.testing.assert_array_equal(
        allowed.predict(None, signature, {"values": np.ones(9, np.float32)})["doubled"],
        np.full(9, 2.0, np.float32))


# --- 6: a stop waits for every response to be written whole -------------------------------

def test_stop_waits_until_a_response_in_flight_is_written(exported, monkeypatch):
    sending, sent = threading.Event(), threading.Event()
    original = rest._Handler._send

    def slow_send(self, *args):
        if self.path.startswith("/v1/models/"):
            sending.set()
            time.sleep(1.0)  # a slow writer (or reader) at the moment the stop comes
        original(self, *args)
        if self.path.startswith("/v1/models/"):
            sent.set()

    monkeypatch.setattr(rest._Handler, "_send", slow_send)
    server = serve(model_base_path=str(exported["base"]), grpc_port=0, rest_port=0)
    answers = []
    reader = threading.Thread(target=lambda: answers.append(
        http("GET", f"{server.rest_url}/v1/models/query_tower")))
    reader.start()
    assert sending.wait(30)
    server.stop(grace=10)
    assert sent.is_set(), "stop() returned before the response in flight was written"
    reader.join(30)
    assert answers and answers[0][0] == 200 and answers[0][1]["model_version_status"]


# --- 7, 12, 14: HTTP/1.1 keep-alive, backlog, idle timeout, JSON refusals, HEAD ---------

def listen_backlog(sock: socket.socket) -> int:
    """The kernel's accept-queue limit of a listening socket: Linux reports it as
    tcp_info.tcpi_sacked (u32 at byte 28) while the socket listens."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[28:32], "little")


def test_rest_keeps_connections_alive_and_has_a_real_backlog(server):
    assert listen_backlog(server._rest.socket) >= 128  # socketserver's default is 5
    connection = http_client.HTTPConnection(server.host, server.rest_port, timeout=10)
    sockets = []
    try:
        for _ in range(3):
            connection.request("GET", "/v1/models/query_tower")
            response = connection.getresponse()
            assert response.status == 200 and response.version == 11
            json.loads(response.read())
            sockets.append(connection.sock)
    finally:
        connection.close()
    assert len(set(map(id, sockets))) == 1  # one connection, not one per request
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        http("GET", f"{server.rest_url}/v1/models/query_tower")[0])) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 50


def test_an_idle_or_stalled_rest_connection_is_closed(server):
    started = time.monotonic()
    assert raw_http(server, b"") == b""  # idle: closed by the server, not by our timeout
    assert time.monotonic() - started < 9
    answer = raw_http(server, b"POST /v1/models/query_tower:predict HTTP/1.1\r\n"
                              b"Host: x\r\nContent-Length: 100\r\n\r\n{\"inst")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and "did not arrive" in json.loads(body)["error"]


# Each request is exactly what the server reads before it refuses (a closed socket with
# unread bytes would answer with a reset, not with the refusal).
@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * (65_537 - 5), 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)), 431),
    (b"BREW /v1/models/query_tower HTTP/1.1\r\nHost: x\r\n\r\n", 501),
])
def test_the_standard_librarys_refusals_are_json(server, request_bytes, status):
    head, _, body = raw_http(server, request_bytes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status)
    assert b"application/json" in head and json.loads(body)["error"]


def test_an_oversized_body_that_stalls_still_gets_its_413(server):
    head = (b"POST /v1/models/query_tower:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % (17 << 20))  # over the 16 MiB limit
    answer = raw_http(server, head + b"{" * 1024)  # then silence past the idle timeout
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


def test_head_answers_headers_without_a_body(server):
    answer = raw_http(server, b"HEAD /v1/models/query_tower HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head and body == b""


def test_histories_are_padded_to_a_shared_width_before_batching():
    from towerrec.serving.predictor import pad_history
    request = {"history": np.array([[b"1", b"2", b"3"]], dtype=object),
               "user_id": np.array([b"u"], dtype=object)}
    padded = pad_history(request)
    assert list(padded["history"][0]) == [b""] * 5 + [b"1", b"2", b"3"]
    assert padded["user_id"] is request["user_id"]
    eight = {"history": np.full((2, 8), b"x", dtype=object)}
    assert pad_history(eight) is eight


# --- 8, 9, 11: version folders, listing failures, load failures ---------------------------

def test_version_folders_follow_tf_servings_rule(tmp_path):
    for name in ("99999999999999999999999", "0002", "3", "x", ".tmp-4"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    assert versions_on_disk(tmp_path) == {2: "0002", 3: "3"}


def test_a_zero_padded_version_loads_from_its_real_folder(exported, tmp_path):
    import shutil
    model = tmp_path / "query_tower"
    shutil.copytree(exported["written"]["query_tower"], model / "0002")
    (model / "99999999999999999999999").mkdir()
    manager = ModelManager(lambda: [ModelSource("query_tower", model)])
    manager.refresh()
    (status,) = manager.status("query_tower")
    assert (status.version, status.state, status.error) == (2, "AVAILABLE", None)
    assert manager.get("query_tower").path == model / "0002"


def test_a_failed_listing_keeps_the_loaded_version(exported, monkeypatch, caplog):
    manager = ModelManager(lambda: [ModelSource("query_tower",
                                                exported["base"] / "query_tower")])
    manager.refresh()
    served = manager.get("query_tower").version

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(manager_module, "versions_on_disk", unreadable)
    with caplog.at_level(logging.WARNING, logger="towerrec.serving"):
        manager.refresh()
        manager.refresh()
    assert manager.get("query_tower").version == served
    warnings = [r for r in caplog.records if "cannot list the versions" in r.getMessage()]
    assert len(warnings) == 1 and "Permission denied" in warnings[0].getMessage()


def test_an_unreadable_version_ends_with_its_error_instead_of_loading_forever(
        tmp_path, monkeypatch, caplog):
    (tmp_path / "model" / "1").mkdir(parents=True)

    def denied(name, version, path):
        raise PermissionError(13, "Permission denied", str(path / "saved_model.pb"))

    monkeypatch.setattr(manager_module, "load_servable", denied)
    manager = ModelManager(lambda: [ModelSource("model", tmp_path / "model")])
    with caplog.at_level(logging.WARNING, logger="towerrec.serving"):
        manager.refresh()
        manager.refresh()  # not retried (unchanged folder), no traceback per poll
    (status,) = manager.status("model")
    assert status.state == END and "Permission denied" in status.error.message
    assert not [r for r in caplog.records if r.exc_info]


def test_permission_errors_of_a_version_folder_are_serving_errors(tmp_path, monkeypatch):
    from towerrec.serving.models import load_servable
    (tmp_path / "saved_model.pb").write_bytes(b"")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ServingError) as error:
        load_servable("m", 1, tmp_path)
    assert error.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "Permission denied" in error.value.message


# --- 13, 14: ports and CLI values --------------------------------------------------------

@pytest.mark.parametrize("field, port", [("grpc_port", 99999), ("grpc_port", -7),
                                         ("rest_port", 70000), ("rest_port", -2)])
def test_ports_out_of_range_are_refused(field, port):
    with pytest.raises(ValueError, match=f"{field} {port} is not a port"):
        ServerOptions(model_base_path="models", **{field: port})


@pytest.mark.parametrize("argv, message", [
    (["serve", "--rest-api-port", "70000"], "rest_port 70000 is not a port"),
    (["serve", "--port", "99999"], "grpc_port 99999 is not a port"),
    (["serve", "--max-rows-per-request", "0"], "max_rows_per_request must be positive"),
])
def test_serve_refuses_bad_flags_in_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "models").mkdir()
    assert main([*argv, "--model-base-path", str(tmp_path / "models")]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_query_refuses_a_negative_top(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["query", "--top", "-5"])
    assert exit.value.code == 2 and "-5 is not positive" in capsys.readouterr().err
