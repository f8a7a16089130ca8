"""Shared by the serving tests: one tiny trained run exported once per session, servers on
loopback ports, and small HTTP and version-publishing helpers."""
from __future__ import annotations

import functools
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.export.export import example_requests, export_models
from towerrec.training.train import train

import numpy as np

from tests.conftest import slice_config

_EXPORTED: Dict[str, object] = {}


def tiny_export(tiny_encoder_dir, movielens_slice, tmp_path_factory) -> Dict[str, object]:
    """{"run", "base", "written": {model: version path}, "requests": {model: inputs}}, made
    once per session whichever serving test module asks first."""
    if not _EXPORTED:
        run_dir = tmp_path_factory.mktemp("serving_run")
        run = train(slice_config(movielens_slice, run_dir, **{"training.epochs": 1}),
                    encoder_dir=tiny_encoder_dir, verbose=0)
        written = export_models(run, run_dir / "models", k=20)
        requests = example_requests(run)
        _EXPORTED.update(run=run, base=run_dir / "models", written=written,
                         requests={name: requests[name] for name in written})
    return _EXPORTED


@functools.lru_cache(maxsize=None)
def _loaded(path: str):
    import scann  # noqa: F401
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    return tf.saved_model.load(path)


def in_process(path: Path, request: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The answer of tf.saved_model.load(path).signatures["serving_default"] (loaded once
    per path)."""
    import tensorflow as tf

    function = _loaded(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in function(**{k: tf.constant(v)
                                                  for k, v in request.items()}).items()}


def assert_same_outputs(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]):
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        actual = np.asarray(got[name])
        assert actual.shape == expected.shape, name
        if expected.dtype == object:
            actual = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v,
                                  otypes=[object])(actual)
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5, err_msg=name)


def as_json(request: Dict[str, np.ndarray]) -> Dict[str, list]:
    return {k: (v.astype(str) if v.dtype.kind in "SO" else v).tolist()
            for k, v in request.items()}


def http(method: str, url: str, body=None, raw: Optional[bytes] = None, timeout=30):
    """(status, decoded JSON or text) for one HTTP request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def publish(source: Path, model_dir: Path, version: int,
            change: Optional[Callable[[Path], None]] = None) -> Path:
    """Copies a version folder to model_dir/<version> the way exports do: into a temporary
    folder first (which the server ignores), then renamed into place; `change` may spoil
    the copy before it appears."""
    tmp = model_dir / f".tmp-{version}"
    shutil.copytree(source, tmp)
    if change is not None:
        change(tmp)
    final = model_dir / str(version)
    tmp.rename(final)
    return final


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition"):
    """Polls until condition() holds (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metric(server, name: str, **labels) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
