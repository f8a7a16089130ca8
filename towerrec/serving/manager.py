"""The version manager: which versions of which models are served, kept current by polling.

Every poll re-reads the model list (base path subfolders or models.config) and each model's
integer version folders (other names, such as `.tmp-3`, are ignored). Versions are tried
newest first until the policy's count (TF Serving's `latest`: 1) is available: a new version
is loaded and warmed up while the old one keeps serving, then swapped in, then the old one is
unloaded. A version that fails to load stays in the status API with its error, and is retried
only once its folder changes. Requests resolve a version under a lock and keep the servable
they got, so an unload never breaks a request in flight.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from towerrec.serving.errors import ServingError, first_line, not_found
from towerrec.serving.metrics import Metrics
from towerrec.serving.model_config import ModelConfigError, ModelSource
from towerrec.serving.models import Servable, load_servable

import grpc

log = logging.getLogger("towerrec.serving")
_VERSION = re.compile(r"^[0-9]+$")
INT64_MAX = 2**63 - 1
LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionStatus:
    version: int
    state: str
    error: Optional[ServingError] = None
    fingerprint: Optional[tuple] = None  # of the folder that failed, to retry on change


class _Model:
    def __init__(self, source: ModelSource):
        self.source = source
        self.servables: Dict[int, Servable] = {}
        self.status: Dict[int, VersionStatus] = {}
        self.listing_error: Optional[str] = None  # the last failure to list its versions


def versions_on_disk(base_path: Path) -> Dict[int, str]:
    """{version: folder name} of a model's version folders. As in TF Serving, a version is
    a folder named by digits that fit an int64 (`0002` is version 2; a longer name is no
    version); where two names give one version, the first in name order is used. Raises
    OSError when the folder cannot be listed (the caller keeps what it serves)."""
    found: Dict[int, str] = {}
    for name in sorted(p.name for p in Path(base_path).iterdir()):
        if _VERSION.match(name) and int(name) <= INT64_MAX and (
                Path(base_path) / name).is_dir():
            found.setdefault(int(name), name)
    return found


def fingerprint(path: Path) -> Optional[tuple]:
    """Names, sizes and mtimes of everything in a version folder: changes when it is
    rewritten, so that a failed version is tried again then (and not before)."""
    try:
        return tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in sorted(Path(path).rglob("*")))
    except OSError:
        return None


class ModelManager:
    def __init__(self, sources: Callable[[], List[ModelSource]],
                 metrics: Optional[Metrics] = None):
        """sources() lists the models to serve; it is called again at every poll."""
        self._sources = sources
        self._metrics = metrics
        self._models: Dict[str, _Model] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._config_error: Optional[str] = None

    # --- requests -----------------------------------------------------------------------
    def get(self, name: str, version: Optional[int] = None,
            label: Optional[str] = None) -> Servable:
        """The servable for a request: the newest available version unless one is named."""
        with self._lock:
            model = self._model(name)
            if label:
                if label not in model.source.labels:
                    raise not_found(f"model '{name}' has no version label '{label}'")
                version = model.source.labels[label]
            if version is None:
                if not model.servables:
                    raise not_found(f"model '{name}' has no version available"
                                    f"{self._why_not(model)}")
                return model.servables[max(model.servables)]
            if version not in model.servables:
                available = ", ".join(map(str, sorted(model.servables))) or "none"
                raise not_found(f"model '{name}' version {version} is not available "
                                f"(available: {available}){self._why_not(model, version)}")
            return model.servables[version]

    def status(self, name: str, version: Optional[int] = None) -> List[VersionStatus]:
        with self._lock:
            model = self._model(name)
            found = sorted(model.status.values(), key=lambda s: s.version)
        if version is not None:
            found = [s for s in found if s.version == version]
            if not found:
                raise not_found(f"model '{name}' has no version {version}")
        elif not found:
            raise not_found(f"model '{name}' has no versions under {model.source.base_path}")
        return found

    def knows(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def names(self) -> List[str]:
        with self._lock:
            return sorted(self._models)

    def _model(self, name: str) -> _Model:
        if name not in self._models:
            served = ", ".join(sorted(self._models)) or "none"
            raise not_found(f"model '{name}' is not served (models: {served})")
        return self._models[name]

    @staticmethod
    def _why_not(model: _Model, version: Optional[int] = None) -> str:
        failed = [s for s in model.status.values() if s.error is not None
                  and (version is None or s.version == version)]
        if not failed:
            return ""
        latest = max(failed, key=lambda s: s.version)
        assert latest.error is not None  # only failed versions were kept
        return f"; version {latest.version} failed to load: {latest.error.message}"

    # --- polling ------------------------------------------------------------------------
    def start(self, poll_seconds: float):
        """Polls every `poll_seconds`; as in TF Serving, 0 or less loads once, no polling."""
        if poll_seconds <= 0:
            return

        def poll():
            while not self._stop.wait(poll_seconds):
                self.refresh()

        self._thread = threading.Thread(target=poll, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def refresh(self):
        """One poll: load what is new, unload what is replaced. Never raises."""
        try:
            sources = self._sources()
            self._config_error = None
        except ModelConfigError as error:
            if str(error) != self._config_error:  # once, not at every poll
                log.error("model config: %s (serving what is loaded)", error)
            self._config_error = str(error)
            return
        for source in sources:
            if self._stop.is_set():
                return
            try:
                self._refresh_model(source)
            except Exception:  # a bug must not stop the poller or the other models
                log.exception("refreshing model %s failed", source.name)
        removed = set(self.names()) - {s.name for s in sources}
        for name in removed:
            self._retire(self._models[name], keep=set())

    def _refresh_model(self, source: ModelSource):
        with self._lock:
            model = self._models.setdefault(source.name, _Model(source))
            model.source = source
        try:
            on_disk = versions_on_disk(source.base_path)
        except OSError as error:
            # A transient failure (a remount, a permission being fixed) must not unload
            # what serves: keep it and say why, once per distinct failure.
            if str(error) != model.listing_error:
                log.warning("cannot list the versions of %s under %s: %s (keeping the %d "
                            "loaded version(s))", source.name, source.base_path,
                            error.strerror or error, len(model.servables))
            model.listing_error = str(error)
            return
        if model.listing_error is not None:
            log.info("versions of %s are readable again", source.name)
            model.listing_error = None
        keep: List[int] = []
        for version in source.candidates(list(on_disk)):
            if source.num_versions is not None and len(keep) >= source.num_versions:
                break
            if version in model.servables or self._load(model, version, on_disk[version]):
                keep.append(version)
        self._retire(model, set(keep))
        with self._lock:  # forget versions whose folders are gone (and not served)
            for version in set(model.status) - set(on_disk) - set(model.servables):
                del model.status[version]

    def _load(self, model: _Model, version: int, folder: str) -> bool:
        """Loads and warms up a version from its folder; True if it is now available."""
        name, path = model.source.name, model.source.base_path / folder
        previous = model.status.get(version)
        current = fingerprint(path)
        if previous is not None and previous.error is not None and (
                previous.fingerprint == current):
            return False  # failed before and unchanged since: not retried
        self._set(model, VersionStatus(version, LOADING))
        started = time.monotonic()
        try:
            try:
                servable = load_servable(name, version, path)
            except ServingError:
                raise
            except Exception as error:  # whatever it is, the version ends with its reason
                raise ServingError(grpc.StatusCode.UNKNOWN,
                                   f"cannot load {path}: {first_line(error)}") from None
        except ServingError as error:
            self._set(model, VersionStatus(version, END, error, current))
            log.warning("failed to load %s version %d: %s", name, version, error)
            if self._metrics:
                self._metrics.load_failures.labels(name).inc()
            return False
        with self._lock:
            model.servables[version] = servable
            model.status[version] = VersionStatus(version, AVAILABLE)
        log.info("loaded %s version %d from %s in %.1fs", name, version, path,
                 time.monotonic() - started)
        self._count(model)
        return True

    def _retire(self, model: _Model, keep: set):
        for version in sorted(set(model.servables) - keep):
            self._set(model, VersionStatus(version, UNLOADING))
            with self._lock:
                del model.servables[version]
                model.status[version] = VersionStatus(version, END)
            log.info("unloaded %s version %d", model.source.name, version)
        self._count(model)

    def _set(self, model: _Model, status: VersionStatus):
        with self._lock:
            model.status[status.version] = status

    def _count(self, model: _Model):
        if self._metrics:
            self._metrics.loaded_versions.labels(model.source.name).set(len(model.servables))
