"""The gRPC services: tensorflow.serving.PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus); other methods answer UNIMPLEMENTED. The handlers are
registered with lenient deserializers, so that a message that is not a valid request proto
is INVALID_ARGUMENT (gRPC's own handling would answer INTERNAL)."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Tuple

from towerrec.serving.errors import ServingError, invalid
from towerrec.serving.metrics import UNKNOWN_MODEL, Metrics
from towerrec.serving.predictor import Predictor
from towerrec.serving.responses import metadata_response, model_spec, status_response
from towerrec.serving.tensors import from_ndarray, to_ndarray

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

log = logging.getLogger("towerrec.serving")


class Services:
    def __init__(self, predictor: Predictor, metrics: Metrics):
        self.predictor = predictor
        self.manager = predictor.manager
        self.metrics = metrics

    def Predict(self, request, context):
        def predict(version, label):
            servable, signature = self.predictor.resolve(
                request.model_spec.name, version, label, request.model_spec.signature_name)
            try:
                arrays = {n: to_ndarray(t, n) for n, t in request.inputs.items()}
            except ValueError as e:
                raise invalid(str(e)) from None
            outputs = self.predictor.predict(servable, signature, arrays,
                                             request.output_filter, context.time_remaining())
            response = predict_pb2.PredictResponse(
                model_spec=model_spec(servable, signature.name))
            for name, array in outputs.items():
                response.outputs[name].CopyFrom(from_ndarray(array))
            return response

        return self._call(context, "predict", request, predict)

    def GetModelMetadata(self, request, context):
        def metadata(version, label):
            servable = self.manager.get(request.model_spec.name, version, label)
            return metadata_response(servable, list(request.metadata_field))

        return self._call(context, "metadata", request, metadata)

    def GetModelStatus(self, request, context):
        def status(version, label):
            if label:
                version = self.manager.get(request.model_spec.name, None, label).version
            return status_response(self.manager.status(request.model_spec.name, version))

        return self._call(context, "status", request, status)

    def _call(self, context, api: str, request, handler: Callable):
        """Metrics, and every error as a gRPC status (never a traceback)."""
        malformed = isinstance(request, _Malformed)
        model = UNKNOWN_MODEL
        if not malformed and self.manager.knows(request.model_spec.name):
            model = request.model_spec.name
        try:
            with self.metrics.observe(model, "grpc", api):
                if malformed:
                    raise invalid(f"the {api} request is not a valid request message")
                spec = request.model_spec
                return handler(spec.version.value if spec.HasField("version") else None,
                               spec.version_label or None)
        except ServingError as error:
            context.abort(error.code, error.message)
        except Exception:
            log.exception("gRPC %s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")


class _Malformed:
    """Stands for a request that did not parse (gRPC itself treats None as a failure)."""


def _lenient(message_class) -> Callable[[bytes], object]:
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception:  # DecodeError, or RecursionError on absurd nesting
            return _Malformed()
    return parse


def add_services(server: grpc.Server, predictor: Predictor, metrics: Metrics):
    services = Services(predictor, metrics)
    methods: Dict[str, Dict[str, Tuple[Callable, type]]] = {
        "tensorflow.serving.PredictionService": {
            "Predict": (services.Predict, predict_pb2.PredictRequest),
            "GetModelMetadata": (services.GetModelMetadata,
                                 get_model_metadata_pb2.GetModelMetadataRequest)},
        "tensorflow.serving.ModelService": {
            "GetModelStatus": (services.GetModelStatus,
                               get_model_status_pb2.GetModelStatusRequest)},
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {
        name: grpc.unary_unary_rpc_method_handler(
            function, request_deserializer=_lenient(request_class),
            response_serializer=lambda message: message.SerializeToString())
        for name, (function, request_class) in handlers.items()})
        for service, handlers in methods.items()])
