"""The gRPC services: tensorflow.serving.PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus). Other methods answer UNIMPLEMENTED (the stubs' default)."""
from __future__ import annotations

import logging

import grpc
from tensorflow_serving.apis import (model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving.errors import ServingError, invalid
from serving.metrics import UNKNOWN_MODEL, Metrics
from serving.predictor import Predictor
from serving.responses import metadata_response, model_spec, status_response
from serving.tensors import from_ndarray, to_ndarray

log = logging.getLogger("towerrec.serving")


class _Calls:
    """Runs one call: metrics, and every error as a gRPC status (never a traceback)."""

    def __init__(self, predictor: Predictor, metrics: Metrics):
        self.predictor = predictor
        self.metrics = metrics

    def call(self, context, api: str, spec, handler):
        model = spec.name if self.predictor.manager.knows(spec.name) else UNKNOWN_MODEL
        try:
            with self.metrics.observe(model, "grpc", api):
                return handler(spec.version.value if spec.HasField("version") else None,
                               spec.version_label or None)
        except ServingError as error:
            context.abort(error.code, error.message)
        except Exception:
            log.exception("gRPC %s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, _Calls):
    def Predict(self, request, context):
        def predict(version, label):
            servable, signature = self.predictor.resolve(
                request.model_spec.name, version, label, request.model_spec.signature_name)
            try:
                arrays = {n: to_ndarray(t, n) for n, t in request.inputs.items()}
            except ValueError as e:
                raise invalid(str(e)) from None
            outputs = self.predictor.predict(servable, signature, arrays,
                                             request.output_filter)
            response = predict_pb2.PredictResponse(
                model_spec=model_spec(servable, signature.name))
            for name, array in outputs.items():
                response.outputs[name].CopyFrom(from_ndarray(array))
            return response

        return self.call(context, "predict", request.model_spec, predict)

    def GetModelMetadata(self, request, context):
        def metadata(version, label):
            servable = self.predictor.manager.get(request.model_spec.name, version, label)
            return metadata_response(servable, list(request.metadata_field))

        return self.call(context, "metadata", request.model_spec, metadata)


class ModelService(model_service_pb2_grpc.ModelServiceServicer, _Calls):
    def GetModelStatus(self, request, context):
        def status(version, label):
            if label:
                version = self.predictor.manager.get(request.model_spec.name, None,
                                                     label).version
            return status_response(self.predictor.manager.status(request.model_spec.name,
                                                                 version))

        return self.call(context, "status", request.model_spec, status)


def add_services(server: grpc.Server, predictor: Predictor, metrics: Metrics):
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(predictor, metrics), server)
