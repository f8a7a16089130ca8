"""TensorProto <-> numpy without TensorFlow ops, for the server and the client.

Requests are checked while they are decoded: an unsupported dtype, a negative dimension or a
value count that does not match the shape is a `ValueError` naming the tensor, never a huge
allocation (a proto that claims [2**40] elements with one value is refused, not filled).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

DEFAULT_SIGNATURE = "serving_default"  # the signature a request without a name asks for

# dtype enum -> (numpy dtype, the repeated field of TensorProto that carries the values)
_DTYPES: Dict[int, Tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_ENUM_OF = {dtype: enum for enum, (dtype, _) in _DTYPES.items() if enum != types_pb2.DT_STRING}


def dtype_name(enum: int) -> str:
    """'string', 'float32', ... for a DataType enum value (also one this module lacks)."""
    if enum in _DTYPES:
        return "string" if enum == types_pb2.DT_STRING else _DTYPES[enum][0].name
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"dtype {enum}"


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """A request tensor as numpy: strings as an object array of bytes."""
    if proto.dtype not in _DTYPES:
        raise ValueError(f"input '{name}': {dtype_name(proto.dtype)} is not a supported dtype")
    dtype, field = _DTYPES[proto.dtype]
    if proto.tensor_shape.unknown_rank:
        raise ValueError(f"input '{name}': the shape must have a known rank")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"input '{name}': negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if proto.tensor_content and field != "string_val":
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise ValueError(f"input '{name}': tensor_content has {len(proto.tensor_content)} "
                             f"bytes, shape {list(shape)} of {dtype.name} needs "
                             f"{count * dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).reshape(shape)
    values = getattr(proto, field)
    if len(values) != count:
        raise ValueError(f"input '{name}': {len(values)} value(s) for shape {list(shape)} "
                         f"({count} elements)")
    if field == "string_val":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise ValueError(f"input '{name}': a value does not fit {dtype.name}") from None


def is_string(array: np.ndarray) -> bool:
    return array.dtype == object or array.dtype.kind in "SU"


def from_ndarray(array) -> tensor_pb2.TensorProto:
    """numpy (or a list) -> TensorProto; str is sent as UTF-8 bytes."""
    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape])
    if is_string(array):
        values = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                      string_val=values)
    if array.dtype not in _ENUM_OF:
        raise ValueError(f"dtype {array.dtype} cannot be sent")
    return tensor_pb2.TensorProto(dtype=_ENUM_OF[array.dtype], tensor_shape=shape,
                                  tensor_content=array.astype(array.dtype.newbyteorder("<"))
                                  .tobytes())
