"""Hot reload: a new version published while clients are sending is loaded, warmed up and
swapped in with no failed request; incomplete or corrupt versions are not served, the
previous version keeps serving, the status APIs say why, and a failed version is tried again
only when its folder changes."""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.serving.client import RecommenderClient
from towerrec.serving.server import serve

import pytest

from tests.serving_helpers import (
    as_json,
    assert_same_outputs,
    http,
    in_process,
    metric,
    publish,
    tiny_export,
    wait_for,
)

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

MODEL = "query_tower"


@pytest.fixture(scope="module")
def exported(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    return tiny_export(tiny_encoder_dir, movielens_slice, tmp_path_factory)


class Load:
    """Client threads (gRPC and REST) sending the same request until stopped; they record
    the version of every answer and every failure."""

    def __init__(self, server, request, threads=3):
        self.server, self.request = server, request
        self.versions, self.failures = [], []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._grpc) for _ in range(threads - 1)]
        self._threads.append(threading.Thread(target=self._rest))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def latest(self):
        with self._lock:
            return self.versions[-1] if self.versions else None

    def _record(self, version=None, failure=None):
        with self._lock:
            (self.versions.append(version) if failure is None
             else self.failures.append(failure))

    def _grpc(self):
        with RecommenderClient(self.server.grpc_address) as client:
            while not self._stop.is_set():
                try:
                    answer = client.predict(MODEL, self.request)
                    self._record(version=answer.version)
                except Exception as error:
                    self._record(failure=repr(error))

    def _rest(self):
        body = {"inputs": as_json(self.request)}
        while not self._stop.is_set():
            status, answer = http("POST", f"{self.server.rest_url}/v1/models/{MODEL}:predict",
                                  body)
            if status != 200:
                self._record(failure=f"{status} {answer}")


def _garbage_graph(folder):
    (folder / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel\xff" * 50)


def _no_variables(folder):
    shutil.rmtree(folder / "variables")


def _bad_warmup(folder):
    """A warm-up record whose request the model refuses (an input it does not have)."""
    from towerrec.export.export import write_warmup

    import numpy as np

    shutil.rmtree(folder / "assets.extra")
    write_warmup(folder, MODEL, {"no_such_input": np.array([b"x"], dtype=object)})


def test_hot_reload_under_load_and_corrupt_versions(exported, tmp_path):
    source = exported["written"][MODEL]
    request = exported["requests"][MODEL]
    want = in_process(source, request)
    model_dir = tmp_path / "models" / MODEL
    model_dir.mkdir(parents=True)
    publish(source, model_dir, 1)
    (model_dir / ".tmp-7").mkdir()        # not an integer: ignored
    (model_dir / "notes").mkdir()
    with serve(model_base_path=str(tmp_path / "models"), grpc_port=0, rest_port=0,
               file_system_poll_wait_seconds=0.2) as server, \
            RecommenderClient(server.grpc_address) as client:
        assert [s["version"] for s in client.status(MODEL)] == [1]

        with Load(server, request) as load:
            wait_for(lambda: load.latest() == 1, what="answers from version 1")
            publish(source, model_dir, 2)
            wait_for(lambda: load.latest() == 2, what="answers from version 2")
            served_after = len(load.versions)
            wait_for(lambda: len(load.versions) > served_after + 20, what="more answers")
        assert load.failures == []
        switched = load.versions.index(2)
        assert set(load.versions[:switched]) == {1} and load.versions[-1] == 2
        assert_same_outputs(client.predict(MODEL, request), want)
        assert [(s["version"], s["state"]) for s in client.status(MODEL)] == [
            (1, "END"), (2, "AVAILABLE")]

        # Broken versions 3, 4, 5: none is served, version 2 keeps answering, and the
        # status APIs (gRPC and REST) say why.
        broken = {3: (_garbage_graph, "DATA_LOSS", "is not a SavedModel"),
                  4: (_no_variables, None, "cannot load"),
                  5: (_bad_warmup, "INVALID_ARGUMENT", "warm-up request 1 failed: unknown "
                                                       "input 'no_such_input'")}
        for version, (spoil, code, words) in broken.items():
            publish(source, model_dir, version, spoil)
            wait_for(lambda version=version: any(
                s["version"] == version and s["error_message"] for s in client.status(MODEL)),
                     what=f"version {version} to fail")
            (status,) = client.status(MODEL, version)
            assert status["state"] == "END" and status["error_code"] != "OK", status
            assert words in status["error_message"], status
            assert code is None or status["error_code"] == code, status
            assert client.predict(MODEL, request).version == 2
            rest_status, body = http("GET", f"{server.rest_url}/v1/models/{MODEL}/versions/"
                                     f"{version}")
            (entry,) = body["model_version_status"]
            assert rest_status == 200 and entry["state"] == "END"
            assert words in entry["status"]["error_message"]
        states = {s["version"]: s["state"] for s in client.status(MODEL)}
        assert states == {1: "END", 2: "AVAILABLE", 3: "END", 4: "END", 5: "END"}
        http_status, body = http("POST", f"{server.rest_url}/v1/models/{MODEL}/versions/5"
                                 ":predict", {"inputs": as_json(request)})
        assert http_status == 404 and "version 5 failed to load" in body["error"]

        # Not retried while unchanged (polls every 0.2 s) ...
        failures = metric(server, "towerrec_serving_load_failures_total", model=MODEL)
        assert failures == 3
        polls = 10
        time.sleep(polls * 0.2)
        assert metric(server, "towerrec_serving_load_failures_total", model=MODEL) == 3
        # ... and tried again once the folder changes: version 3 repaired (atomically) is
        # loaded; it is the newest that loads, so it takes over from version 2.
        fixed = model_dir / "3" / "saved_model.pb.new"
        shutil.copyfile(source / "saved_model.pb", fixed)
        os.replace(fixed, model_dir / "3" / "saved_model.pb")
        wait_for(lambda: client.predict(MODEL, request).version == 3,
                 what="the repaired version 3")
        assert Counter(s["state"] for s in client.status(MODEL)) == {"END": 4, "AVAILABLE": 1}
        assert metric(server, "towerrec_serving_loaded_versions", model=MODEL) == 1
