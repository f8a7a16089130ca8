"""What both APIs (gRPC and REST) do for a Predict: resolve the servable, validate the
inputs against the signature, run (through the batcher when batching is on), filter outputs.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from towerrec.serving.batching import BatchScheduler
from towerrec.serving.errors import invalid
from towerrec.serving.manager import ModelManager
from towerrec.serving.models import Servable, Signature
from towerrec.serving.validation import validate


class Predictor:
    def __init__(self, manager: ModelManager, batcher: Optional[BatchScheduler] = None):
        self.manager = manager
        self.batcher = batcher

    def resolve(self, name: str, version: Optional[int], label: Optional[str],
                signature: str) -> Tuple[Servable, Signature]:
        servable = self.manager.get(name, version, label)
        return servable, servable.signature(signature)

    def predict(self, servable: Servable, signature: Signature,
                arrays: Dict[str, np.ndarray],
                output_filter: Iterable[str] = ()) -> Dict[str, np.ndarray]:
        validate(signature.inputs, arrays)
        wanted = list(output_filter)
        unknown = [n for n in wanted if n not in signature.outputs]
        if unknown:
            raise invalid(f"output_filter names '{unknown[0]}', which is not an output "
                          f"(outputs: {', '.join(signature.outputs)})")
        if self.batcher is not None and signature.batchable:
            key = (servable.name, servable.version, signature.name)
            outputs = self.batcher.run(key, signature.run, arrays)
        else:
            outputs = signature.run(arrays)
        return {n: outputs[n] for n in wanted} if wanted else outputs
