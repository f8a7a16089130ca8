"""Which models to serve: every subfolder of a base path, or a TF Serving models.config.

A models.config is TF Serving's ModelServerConfig text proto:

    model_config_list {
      config { name: "retrieval_brute_force" base_path: "/models/retrieval_brute_force"
               model_platform: "tensorflow" }
    }

`model_version_policy` (latest { num_versions }, all {}, specific { versions }) and
`version_labels` are honoured; relative base paths are read from the current directory, as
TF Serving does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


class ModelConfigError(ValueError):
    """A models.config (or base path) that cannot be served; the message says why."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    base_path: Path
    num_versions: Optional[int] = 1             # serve the newest n; None: no limit
    versions: Optional[FrozenSet[int]] = None   # 'specific' policy: only these
    labels: Dict[str, int] = field(default_factory=dict, hash=False, compare=False)

    def candidates(self, on_disk: List[int]) -> List[int]:
        """Versions that may be served, newest first."""
        wanted = [v for v in on_disk if self.versions is None or v in self.versions]
        return sorted(wanted, reverse=True)


def model_sources(model_base_path: Optional[str] = None,
                  model_config_file: Optional[str] = None) -> List[ModelSource]:
    """Read again at every poll, so that a model folder added later is served."""
    if model_config_file:
        return read_model_config(Path(model_config_file))
    if not model_base_path:
        raise ValueError("give model_base_path or model_config_file")
    base = Path(model_base_path)
    if not base.is_dir():
        raise ModelConfigError(f"model base path {base} is not a folder")
    return [ModelSource(p.name, p) for p in sorted(base.iterdir())
            if p.is_dir() and not p.name.startswith(".")]


def read_model_config(path: Path) -> List[ModelSource]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ModelConfigError(f"cannot read model config {path}: {e.strerror}") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ModelConfigError(f"{path}: not a ModelServerConfig text proto: {e}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ModelConfigError(f"{path}: needs a model_config_list")
    sources, names = [], set()
    for model in config.model_config_list.config:
        where = f"{path}: model '{model.name}'"
        if not model.name or not model.base_path:
            raise ModelConfigError(f"{path}: every config needs a name and a base_path")
        if model.name in names:
            raise ModelConfigError(f"{where} is listed twice")
        if model.model_platform not in ("", "tensorflow"):
            raise ModelConfigError(f"{where}: platform '{model.model_platform}' is not "
                                   "supported (only tensorflow)")
        names.add(model.name)
        sources.append(_source(model))
    return sources


def _source(model) -> ModelSource:
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    num_versions: Optional[int] = 1
    versions: Optional[FrozenSet[int]] = None
    if kind == "latest":
        num_versions = max(1, policy.latest.num_versions)
    elif kind == "all":
        num_versions = None
    elif kind == "specific":
        num_versions, versions = None, frozenset(policy.specific.versions)
    return ModelSource(model.name, Path(model.base_path), num_versions, versions,
                       dict(model.version_labels))
