"""What both APIs (gRPC and REST) do for a Predict: resolve the servable, validate the
inputs against the signature, run (through the batcher when batching is on), filter outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from towerrec.memory import trim_heap
from towerrec.serving.batching import BatchScheduler
from towerrec.serving.errors import ServingError, invalid
from towerrec.serving.manager import ModelManager
from towerrec.serving.models import Servable, Signature
from towerrec.serving.validation import validate

import grpc
import numpy as np


@dataclass(frozen=True)
class RequestLimits:
    """What one Predict may ask (ServerOptions has the defaults)."""
    max_rows: int = 1024
    max_values_per_row: int = 10_000
    chunk_rows: int = 32
    timeout_seconds: float = 30.0


class Predictor:
    def __init__(self, manager: ModelManager, batcher: Optional[BatchScheduler] = None,
                 limits: RequestLimits = RequestLimits()):
        self.manager = manager
        self.batcher = batcher
        self.limits = limits

    def resolve(self, name: str, version: Optional[int], label: Optional[str],
                signature: str) -> Tuple[Servable, Signature]:
        servable = self.manager.get(name, version, label)
        return servable, servable.signature(signature)

    def predict(self, servable: Servable, signature: Signature,
                arrays: Dict[str, np.ndarray], output_filter: Iterable[str] = (),
                client_seconds: Optional[float] = None) -> Dict[str, np.ndarray]:
        """Runs a request; `client_seconds` is what the client's own deadline leaves."""
        validate(signature.inputs, arrays)
        rows = self._check_limits(signature, arrays)
        wanted = list(output_filter)
        unknown = [n for n in wanted if n not in signature.outputs]
        if unknown:
            raise invalid(f"output_filter names '{unknown[0]}', which is not an output "
                          f"(outputs: {', '.join(signature.outputs)})")
        seconds = self.limits.timeout_seconds
        if client_seconds is not None:
            if client_seconds <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the client's deadline had passed when the request arrived")
            seconds = min(seconds, client_seconds)
        deadline = time.monotonic() + seconds
        step = self.limits.chunk_rows if signature.batchable and rows else max(rows, 1)
        parts: List[Dict[str, np.ndarray]] = []
        for start in range(0, max(rows, 1), step):
            if parts and time.monotonic() > deadline:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"the request ran past its deadline of {seconds:g} s "
                                   f"after {start} of {rows} rows")
            chunk = ({n: a[start:start + step] for n, a in arrays.items()}
                     if step < rows else arrays)
            parts.append(self._run(servable, signature, chunk))
        outputs = parts[0] if len(parts) == 1 else {
            n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        if len(parts) > 1:
            trim_heap()
        return {n: outputs[n] for n in wanted} if wanted else outputs

    def _run(self, servable: Servable, signature: Signature,
             arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.batcher is not None and signature.batchable:
            key = (servable.name, servable.version, signature.name)
            return self.batcher.run(key, signature.run, pad_history(arrays))
        return signature.run(arrays)

    def _check_limits(self, signature: Signature, arrays: Dict[str, np.ndarray]) -> int:
        """The request's rows (0 for an unbatched signature: run whole), within the limits.
        An unbatched signature's inputs are held to the row limit each (their first
        dimension) as well as to the width limit."""
        for name, array in arrays.items():
            if array.ndim and array.shape[0] > self.limits.max_rows:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"input '{name}' has {array.shape[0]} rows, more than the "
                                   f"limit of {self.limits.max_rows} (--max_rows_per_request)")
        rows = next(iter(arrays.values())).shape[0] if signature.batchable else 0
        for name, array in arrays.items():
            width = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
            if width > self.limits.max_values_per_row:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"input '{name}' has {width} values per row, more than "
                                   f"the limit of {self.limits.max_values_per_row} "
                                   f"(--max_values_per_row)")
        return rows


HISTORY_INPUT = "history"  # towerrec's query signatures: item ids or titles [n, width]
HISTORY_WIDTHS = (8, 16, 32, 64, 128, 256)


def pad_history(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The request with its history padded on the left with "" to the smallest width of
    HISTORY_WIDTHS that holds it, so that requests with histories of different lengths
    batch together (only inputs of one shape concatenate). Exact: the query models ignore
    "" and keep the last known items."""
    history = arrays.get(HISTORY_INPUT)
    if history is None or history.ndim != 2 or history.dtype != object:
        return arrays
    width = next((w for w in HISTORY_WIDTHS if w >= history.shape[1]), history.shape[1])
    if width == history.shape[1]:
        return arrays
    padded = np.full((history.shape[0], width), b"", dtype=object)
    padded[:, width - history.shape[1]:] = history
    return {**arrays, HISTORY_INPUT: padded}
