"""The response protos both APIs return (REST sends them as JSON, the way TF Serving does)."""
from __future__ import annotations

from typing import List

from towerrec.serving.errors import invalid
from towerrec.serving.manager import VersionStatus
from towerrec.serving.models import Servable

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving knows


def model_spec(servable: Servable, signature_name: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


def metadata_response(servable: Servable, fields: List[str]
                      ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not fields:
        raise invalid(f"GetModelMetadataRequest must name a metadata_field "
                      f"('{SIGNATURE_DEF}')")
    for field in fields:
        if field != SIGNATURE_DEF:
            raise invalid(f"metadata field '{field}' is not supported (only "
                          f"'{SIGNATURE_DEF}')")
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=model_spec(servable))
    packed = any_pb2.Any()
    packed.Pack(servable.signature_defs)
    response.metadata[SIGNATURE_DEF].CopyFrom(packed)
    return response


def status_response(statuses: List[VersionStatus]
                    ) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        code = status.error.code if status.error else grpc.StatusCode.OK
        entry = response.model_version_status.add(
            version=status.version,
            state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state))
        entry.status.error_code = code.value[0]
        entry.status.error_message = status.error.message if status.error else ""
    return response
