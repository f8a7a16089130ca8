"""One loaded model version (a servable): its signatures, checked before TF runs them, the
SignatureDefs as TF Serving reports them, and how a version folder is loaded and warmed up.

Loading needs the custom ops the exports use: TF Text (the BERT tokenizer; stock TF Serving
links it) and ScaNN (retrieval_scann and recommender_scann only), registered before
`tf.saved_model.load`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterator

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.serving.errors import ServingError, first_line, invalid
from towerrec.serving.tensors import DEFAULT_SIGNATURE, to_ndarray
from towerrec.serving.validation import InputSpec, validate

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_log_pb2

log = logging.getLogger("towerrec.serving")
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving replays at most this many


def register_custom_ops():
    import tensorflow_text  # noqa: F401
    try:
        import scann  # noqa: F401
    except ImportError:  # then only models without ScaNN ops load
        log.warning("scann is not installed: models with ScaNN ops will not load")


class Signature:
    """A signature's input specs and its function: arrays in, arrays out."""

    def __init__(self, name: str, function):
        self.name = name
        self.function = function
        _, specs = function.structured_input_signature
        self.dtypes = {n: s.dtype for n, s in specs.items()}
        self.inputs: Dict[str, InputSpec] = {n: _input_spec(n, s) for n, s in specs.items()}
        self.outputs = sorted(function.structured_outputs)
        self.batchable = bool(self.inputs) and all(s.batched for s in self.inputs.values())

    def run(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs validated arrays; a failure inside TF is INVALID_ARGUMENT with its message."""
        try:
            result = self.function(**{n: tf.constant(a, self.dtypes[n])
                                      for n, a in arrays.items()})
            return {n: t.numpy() for n, t in result.items()}
        except Exception as error:
            raise invalid(first_line(error)) from None


class Servable:
    """A loaded, warmed-up version of a model."""

    def __init__(self, name: str, version: int, path: Path, loaded, signature_defs):
        self.name = name
        self.version = version
        self.path = path
        self._loaded = loaded  # keeps the functions' variables alive
        self.signature_defs = signature_defs  # get_model_metadata_pb2.SignatureDefMap
        self.signatures = {n: Signature(n, f) for n, f in loaded.signatures.items()}

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise invalid(f"model '{self.name}' version {self.version} has no signature "
                          f"'{name}' (it has: {', '.join(sorted(self.signatures))})")
        return self.signatures[name]


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Loads and warms up a version folder; ServingError (with a code and a one-line why)
    if it is incomplete, corrupt or its warm-up requests fail."""
    path = Path(path)
    try:
        if not (path / "saved_model.pb").is_file():
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"no saved_model.pb in {path}")
        proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    except OSError as e:  # e.g. a folder the server may not read
        code = (grpc.StatusCode.PERMISSION_DENIED if isinstance(e, PermissionError)
                else grpc.StatusCode.UNAVAILABLE)
        raise ServingError(code, f"cannot read {e.filename or path}: "
                                 f"{e.strerror or e}") from None
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"{path / 'saved_model.pb'} is not a SavedModel ({e})") from None
    if not proto.meta_graphs:
        raise ServingError(grpc.StatusCode.DATA_LOSS, f"{path} has no MetaGraph")
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in proto.meta_graphs[0].signature_def.items():
        signature_defs.signature_def[key].CopyFrom(signature_def)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        code = _grpc_code(getattr(e, "error_code", None), grpc.StatusCode.DATA_LOSS)
        raise ServingError(code, f"cannot load {path}: {first_line(e)}") from None
    servable = Servable(name, version, path, loaded, signature_defs)
    warm_up(servable)
    return servable


def warm_up(servable: Servable) -> int:
    """Replays assets.extra/tf_serving_warmup_requests (PredictionLog records) as TF Serving
    does, so that the first real request does not pay for tracing. Returns the count."""
    count = 0
    try:
        for request in warmup_requests(servable.path):
            count += 1
            signature = servable.signature(request.model_spec.signature_name)
            arrays = {n: to_ndarray(t, n) for n, t in request.inputs.items()}
            validate(signature.inputs, arrays)
            signature.run(arrays)
    except Exception as e:
        code = e.code if isinstance(e, ServingError) else grpc.StatusCode.DATA_LOSS
        message = e.message if isinstance(e, ServingError) else first_line(e)
        raise ServingError(code, f"warm-up request {max(count, 1)} failed: {message}") from None
    return count


def warmup_requests(version_path: Path) -> Iterator[predict_pb2.PredictRequest]:
    """The PredictRequests of a version's warm-up file (none if it has no file)."""
    path = Path(version_path) / WARMUP_FILE
    if not path.exists():
        return
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            raise invalid("only predict_log records are supported")
        yield entry.predict_log.request


def _input_spec(name: str, spec: tf.TensorSpec) -> InputSpec:
    dtype = "string" if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype).name
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return InputSpec(name, dtype, shape)


def _grpc_code(number, default: grpc.StatusCode) -> grpc.StatusCode:
    """TF error codes are the canonical gRPC codes."""
    for code in grpc.StatusCode:
        if code.value[0] == number and code != grpc.StatusCode.OK:
            return code
    return default
