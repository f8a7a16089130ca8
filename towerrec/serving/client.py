"""A small client for TF Serving's gRPC API (this server or tensorflow/serving), on the
tensorflow-serving-api stubs only:

    with RecommenderClient("127.0.0.1:8500") as client:
        answer = client.predict("retrieval_brute_force", {"user_id": ["42"], ...})
        answer["item_ids"], answer.version

Numeric inputs are cast to the signature's dtype (read once from GetModelMetadata), so a
Python float list works for a float32 input. Failures raise ServingError(code, message).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

from towerrec.serving.errors import ServingError
from towerrec.serving.tensors import (
    DEFAULT_SIGNATURE,
    dtype_name,
    from_ndarray,
    is_string,
    to_ndarray,
)

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Prediction(dict):
    """Output name -> array, with the model and version that answered."""

    def __init__(self, outputs: Dict[str, np.ndarray], model: str, version: int):
        super().__init__(outputs)
        self.model = model
        self.version = version


class RecommenderClient:
    def __init__(self, address: str = "127.0.0.1:8500", timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._dtypes: Dict[tuple, Dict[str, str]] = {}  # input name -> dtype_name

    def predict(self, model: str, inputs: Mapping[str, object], version: Optional[int] = None,
                signature: str = DEFAULT_SIGNATURE,
                outputs: Optional[List[str]] = None) -> Prediction:
        """inputs: name -> array-like (strings as str or bytes)."""
        request = predict_pb2.PredictRequest(output_filter=outputs or [])
        _spec(request.model_spec, model, version, signature)
        dtypes = self._input_dtypes(model, version, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(from_ndarray(_cast(value, dtypes.get(name))))
        response = self._call(self._predict.Predict, request)
        return Prediction({n: to_ndarray(t, n) for n, t in response.outputs.items()},
                          response.model_spec.name, response.model_spec.version.value)

    def metadata(self, model: str, version: Optional[int] = None) -> dict:
        """{"model", "version", "signatures": {name: {"inputs"/"outputs": {tensor:
        {"dtype", "shape"}}}}}, from the signature_def TF Serving returns (-1: any size)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        _spec(request.model_spec, model, version)
        response = self._call(self._predict.GetModelMetadata, request)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        signatures = {}
        for key, signature in defs.signature_def.items():
            if key.startswith("__"):  # e.g. __saved_model_init_op
                continue
            signatures[key] = {part: {name: {"dtype": dtype_name(info.dtype),
                                             "shape": [d.size for d in info.tensor_shape.dim]}
                                      for name, info in getattr(signature, part).items()}
                               for part in ("inputs", "outputs")}
        return {"model": response.model_spec.name,
                "version": response.model_spec.version.value, "signatures": signatures}

    def status(self, model: str, version: Optional[int] = None) -> List[dict]:
        """[{"version", "state", "error_code", "error_message"}] per version."""
        request = get_model_status_pb2.GetModelStatusRequest()
        _spec(request.model_spec, model, version)
        response = self._call(self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": s.version, "state": states.Name(s.state),
                 "error_code": _code_name(s.status.error_code),
                 "error_message": s.status.error_message}
                for s in response.model_version_status]

    def close(self):
        self._channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc):
        self.close()

    def _input_dtypes(self, model, version, signature) -> Dict[str, str]:
        key = (model, version, signature)
        if key not in self._dtypes:
            meta = self.metadata(model, version)["signatures"].get(signature, {})
            self._dtypes[key] = {n: t["dtype"] for n, t in meta.get("inputs", {}).items()}
        return self._dtypes[key]

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"cannot reach {self.address} ({details})"
            raise ServingError(code, details) from None


def _spec(spec, model: str, version: Optional[int], signature: str = ""):
    spec.name = model
    spec.signature_name = signature
    if version is not None:
        spec.version.value = version


def _cast(value, dtype: Optional[str]) -> np.ndarray:
    """Numbers to the signature's numeric dtype; strings stay strings (a mismatch is the
    server's to report)."""
    array = np.asarray(value)
    if dtype and dtype != "string" and dtype in np.sctypeDict and not is_string(array):
        return array.astype(dtype)
    return array


def _code_name(number: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)
