"""Requests checked against a signature before TensorFlow sees them.

A signature input is an `InputSpec`: its name, dtype ('string', 'float32', ...) and shape
(None for any size). `validate` raises INVALID_ARGUMENT naming the input and what was expected:
unknown or missing names, a wrong dtype, a wrong rank or size, or a batch dimension (dim 0)
that differs between inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from towerrec.serving.errors import invalid
from towerrec.serving.tensors import is_string

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str                       # 'string' or a numpy dtype name
    shape: Optional[Tuple[Optional[int], ...]]  # None: any rank

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype} of any shape"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} [{dims}]"

    def accepts(self, shape: Tuple[int, ...]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(
            want is None or want == size for want, size in zip(self.shape, shape))

    @property
    def batched(self) -> bool:
        """Rank >= 1 with a free first dimension: requests can be stacked along dim 0."""
        return self.shape is not None and len(self.shape) >= 1 and self.shape[0] is None


def dtype_of(array: np.ndarray) -> str:
    return "string" if is_string(array) else array.dtype.name


def _expected(specs: Mapping[str, InputSpec]) -> str:
    return ", ".join(f"{name} ({spec.describe()})" for name, spec in specs.items())


def validate(specs: Mapping[str, InputSpec], arrays: Dict[str, np.ndarray]) -> None:
    if not arrays:
        raise invalid(f"the request has no inputs; expected {_expected(specs)}")
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise invalid(f"unknown input '{unknown[0]}'; expected {_expected(specs)}")
    missing = [name for name in specs if name not in arrays]
    if missing:
        spec = specs[missing[0]]
        raise invalid(f"missing input '{spec.name}' ({spec.describe()})")
    batch = {}
    for name, spec in specs.items():
        array = arrays[name]
        got = dtype_of(array)
        if got != spec.dtype:
            raise invalid(f"input '{name}' must be {spec.dtype}, got {got} "
                          f"(expected {spec.describe()})")
        if not spec.accepts(array.shape):
            raise invalid(f"input '{name}' has shape {list(array.shape)}, expected "
                          f"{spec.describe()}")
        if spec.batched:
            batch[name] = array.shape[0]
    if len(set(batch.values())) > 1:
        sizes = ", ".join(f"{name}: {size}" for name, size in batch.items())
        raise invalid(f"inputs disagree on the batch size (dim 0): {sizes}")
