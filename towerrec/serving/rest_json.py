"""TF Serving's REST JSON <-> numpy, driven by the signature.

Requests: row format `{"instances": [...]}` (one entry per example: an object of named inputs,
or a bare value when the signature has a single input) or columnar `{"inputs": {...}}` (or a
bare value for a single input); `{"b64": "..."}` is a binary string. Responses: row format
gives `{"predictions": [...]}`, columnar gives `{"outputs": ...}`; a single output is given
without its name, as TF Serving does. Every malformed body is a ValueError with a message.
"""
from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from towerrec.serving.validation import InputSpec

import numpy as np

_NUMERIC = (int, float)


def parse_request(body: Any, specs: Mapping[str, InputSpec]) -> Tuple[str, Dict[str, np.ndarray]]:
    """A decoded JSON body -> ("row" or "columnar", {input name: array})."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with \"instances\" or \"inputs\"")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise ValueError("the body must have exactly one of \"instances\" (row format) and "
                         "\"inputs\" (columnar format)")
    if has_rows:
        return "row", _rows(body["instances"], specs)
    return "columnar", _columns(body["inputs"], specs)


def signature_name(body: Any) -> str:
    name = body.get("signature_name", "") if isinstance(body, dict) else ""
    if not isinstance(name, str):
        raise ValueError("\"signature_name\" must be a string")
    return name


def _single(specs: Mapping[str, InputSpec], what: str) -> InputSpec:
    if len(specs) != 1:
        raise ValueError(f"{what} without input names needs a signature with one input; "
                         f"this one has {len(specs)}: {', '.join(specs)}")
    return next(iter(specs.values()))


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def _rows(instances: Any, specs: Mapping[str, InputSpec]) -> Dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise ValueError("\"instances\" must be a non-empty list")
    if not any(_is_named(row) for row in instances):
        spec = _single(specs, "\"instances\"")
        return {spec.name: to_array(instances, spec)}
    if not all(_is_named(row) for row in instances):
        raise ValueError("\"instances\" mixes named (object) and unnamed rows")
    names = set(instances[0])
    for i, row in enumerate(instances):
        if set(row) != names:
            raise ValueError(f"instance {i} has inputs {sorted(row)}, instance 0 has "
                             f"{sorted(names)}")
    return {name: to_array([row[name] for row in instances], specs.get(name), name)
            for name in names}


def _columns(inputs: Any, specs: Mapping[str, InputSpec]) -> Dict[str, np.ndarray]:
    if _is_named(inputs):
        return {name: to_array(value, specs.get(name), name) for name, value in inputs.items()}
    spec = _single(specs, "\"inputs\"")
    return {spec.name: to_array(inputs, spec)}


def to_array(value: Any, spec: Optional[InputSpec], name: str = "") -> np.ndarray:
    """A nested JSON list -> an array of the spec's dtype, nested exactly the spec's rank
    deep. No spec (an unknown input name): an empty placeholder, which validation names."""
    if spec is None:
        return np.zeros(0)
    name = spec.name
    flat: List[Any] = []
    rank = _rank(value) if spec.shape is None else len(spec.shape)
    shape = _flatten(value, rank, flat, name, spec)
    if spec.dtype == "string":
        array = np.empty(len(flat), dtype=object)
        array[:] = [_string(v, name) for v in flat]
        return array.reshape(shape)
    kind = np.dtype(spec.dtype).kind
    for v in flat:
        if kind == "b":
            ok = isinstance(v, bool)
        else:
            ok = isinstance(v, _NUMERIC) and not isinstance(v, bool) and (
                kind == "f" or isinstance(v, int) or (math.isfinite(v) and v == int(v)))
        if not ok:
            raise ValueError(f"input '{name}' must be {spec.dtype}, got "
                             f"{type(v).__name__} {_short(v)}")
    try:
        return np.array(flat, dtype=spec.dtype).reshape(shape)
    except OverflowError:
        raise ValueError(f"input '{name}': a value does not fit {spec.dtype}") from None


def _flatten(value: Any, rank: int, flat: List[Any], name: str,
             spec: InputSpec) -> Tuple[int, ...]:
    """Appends the leaves of `value` (nested `rank` deep) to `flat`; returns the shape."""
    if rank == 0:
        if isinstance(value, list):
            raise ValueError(f"input '{name}' is nested deeper than {spec.describe()}")
        flat.append(value)
        return ()
    if not isinstance(value, list):
        raise ValueError(f"input '{name}' must be nested lists like {spec.describe()}, got "
                         f"{type(value).__name__} {_short(value)} where a list belongs")
    shapes = {_flatten(v, rank - 1, flat, name, spec) for v in value}
    if len(shapes) > 1:
        raise ValueError(f"input '{name}' is ragged: its lists differ in length")
    inner = shapes.pop() if shapes else (0,) * (rank - 1)
    return (len(value),) + inner


def _rank(value: Any) -> int:
    """The nesting depth of a value, following first elements (for an input of any rank)."""
    rank = 0
    while isinstance(value, list) and value:
        value, rank = value[0], rank + 1
    return rank + isinstance(value, list)


def _string(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"input '{name}': invalid base64") from None
    raise ValueError(f"input '{name}' must be string, got {type(value).__name__} "
                     f"{_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def to_json(outputs: Mapping[str, np.ndarray], form: str) -> Dict[str, Any]:
    """Outputs -> the response body: {"predictions": rows} or {"outputs": columns}."""
    columns = {name: _jsonable(name, array) for name, array in outputs.items()}
    if form == "columnar":
        return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
    sizes = {len(array) if np.ndim(array) else None for array in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("the outputs do not share a batch dimension; use the columnar "
                         "\"inputs\" format")
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    rows = len(next(iter(columns.values())))
    return {"predictions": [{name: column[i] for name, column in columns.items()}
                            for i in range(rows)]}


def _jsonable(name: str, array: np.ndarray):
    array = np.asarray(array)
    if array.dtype != object and array.dtype.kind not in "SU":
        return array.tolist()
    leaves: List[Union[str, Dict[str, str]]]
    if name.endswith("_bytes"):  # TF Serving's convention for binary outputs
        leaves = [{"b64": base64.b64encode(v).decode("ascii")} for v in array.reshape(-1)]
    else:
        leaves = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                  for v in array.reshape(-1)]
    result = np.empty(len(leaves), dtype=object)
    result[:] = leaves
    return result.reshape(array.shape).tolist()
