"""Publishing into a TF Serving model base path, `<base>/<model>/<version>/`.

A version is staged as `<model>/.tmp-<v>` (nothing polls a dot folder) and published by one
rename. Every writer of a base path (export, add-items, retrain, rollback) holds its lock
(`exclusive`) and starts by `recover`-ing what a killed writer left:

* a publish cut short between two renames is finished: `publish` lists its staged folders
  in a journal first, and they had all been written (and gated) before the first rename,
  so the served models end up from one training;
* other staged folders are removed.

Version numbers are never reused: a staged, rolled-back or deleted-then-republished number
would name two different models to a client that pins versions.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

from towerrec.data.dataset import DataError

# Every model export writes, in order (the last two need a trained ranker).
log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
MODELS = ("query_tower", "candidate_tower", "retrieval_brute_force", "retrieval_scann",
          "ranker", "recommender", "recommender_scann")
# Those that need a trained ranker (`towerrec train-ranker`).
RANKED_MODELS = ("ranker", "recommender", "recommender_scann")
# Which run folder an export version came from (retrain warm-starts from the served one).
PROVENANCE = "assets.extra/towerrec_run.json"
MODEL_WEIGHTS = "model/weights.index"  # in a run folder: its two towers were trained
# In the model base path while a publish renames its versions into place.
PUBLISH_JOURNAL = ".publishing.json"
LOCK_FILE = ".towerrec.lock"
STAGED_PREFIX = ".tmp-"
ROLLED_BACK_PREFIX = ".rolled-back-"
_NUMBERED = re.compile(rf"^(?:{re.escape(STAGED_PREFIX)}|{re.escape(ROLLED_BACK_PREFIX)})?"
                       r"(\d+)(?:-.*)?$")
_HOLDER = threading.local()  # the locks this thread holds: re-entrant per thread only


def _held() -> Set[Path]:
    if not hasattr(_HOLDER, "paths"):
        _HOLDER.paths = set()
    return _HOLDER.paths


def versions(model_dir: Path) -> List[int]:
    """The integer versions in a model folder, oldest first (other names are not versions)."""
    return sorted(int(p.name) for p in Path(model_dir).glob("*") if p.name.isdigit())


def next_version(model_dir: Path) -> int:
    """One above every number the folder has used: published, staged or rolled back."""
    taken = [int(m.group(1)) for p in Path(model_dir).glob("*")
             if (m := _NUMBERED.match(p.name))]
    return max(taken, default=0) + 1


def served_version(model_dir: Path) -> Optional[Path]:
    """The version TF Serving serves by default: the newest."""
    found = versions(model_dir)
    return Path(model_dir) / str(found[-1]) if found else None


@contextmanager
def exclusive(base_path: Path, create: bool = True):
    """Holds the base path's lock (the kernel drops it if the holder is killed); re-entrant
    within a thread, refused to another thread as to another process. Then recovers what
    a killed writer left."""
    base_path = Path(base_path)
    key = base_path.resolve()
    if key in _held():
        yield
        return
    if not base_path.is_dir():
        if not create:
            raise DataError(f"no model base path {base_path}")
        base_path.mkdir(parents=True)
    with open(base_path / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another towerrec export, add-items, retrain or rollback is "
                            f"writing to {base_path} (it holds {base_path / LOCK_FILE})"
                            ) from None
        _held().add(key)
        try:
            recover(base_path)
            yield
        finally:
            _held().discard(key)


@contextmanager
def run_lock(run_path: Path):
    """Holds a run folder's lock while its catalogue changes (add-items): a second writer
    waits for the first instead of both reading the old additions and one losing its
    items. The kernel drops the lock of a killed holder. Re-entrant within a thread."""
    run_path = Path(run_path)
    key = run_path.resolve() / LOCK_FILE
    if key in _held():
        yield
        return
    run_path.mkdir(parents=True, exist_ok=True)
    with open(run_path / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(f"waiting for another towerrec writing to {run_path} "
                        f"({run_path / LOCK_FILE})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _held().add(key)
        try:
            yield
        finally:
            _held().discard(key)


def recover(base_path: Path) -> None:
    """Finishes a publish that was cut short, then removes other staged folders."""
    finish_publish(base_path)
    for model_dir in (p for p in Path(base_path).iterdir() if p.is_dir()):
        for staged in model_dir.glob(STAGED_PREFIX + "*"):
            shutil.rmtree(staged, ignore_errors=True)


def staged_dir(model_dir: Path) -> Path:
    return Path(model_dir) / f"{STAGED_PREFIX}{next_version(model_dir)}"


def publish(staged: Dict[str, Path],
            after_each: Optional[Callable[[str], None]] = None) -> Dict[str, Path]:
    """Renames each staged .tmp-<v> folder to <v>: one atomic rename per model, after
    listing them all in the base path's journal (see the module's docstring)."""
    if not staged:
        return {}
    base_paths = {tmp.parent.parent.resolve() for tmp in staged.values()}
    assert len(base_paths) == 1, f"one publish, one model base path: {base_paths}"
    base_path = base_paths.pop()
    journal = base_path / PUBLISH_JOURNAL
    written = journal.with_name(journal.name + ".tmp")
    # Relative to the base path: a later run may start in another working directory.
    written.write_text(json.dumps({name: str(tmp.resolve().relative_to(base_path))
                                   for name, tmp in staged.items()}))
    os.replace(written, journal)
    published = {}
    for name, tmp in staged.items():
        published[name] = _rename_into_place(tmp)
        if after_each is not None:
            after_each(name)
    journal.unlink()
    return published


def finish_publish(base_path: Path) -> Dict[str, Path]:
    """Completes a publish that was cut short (its journal is still there): renames the
    staged folders it lists that are not published yet. Returns what it published."""
    journal = Path(base_path) / PUBLISH_JOURNAL
    if not journal.exists():
        return {}
    listed = {name: Path(base_path) / tmp for name, tmp in json.loads(journal.read_text()).items()}
    published = {name: _rename_into_place(tmp) for name, tmp in listed.items() if tmp.exists()}
    journal.unlink()
    if published:
        log.info("finished a publish that was cut short: "
                 + ", ".join(f"{name} {path.name}" for name, path in published.items()))
    return published


def _rename_into_place(tmp: Path) -> Path:
    return tmp.rename(tmp.with_name(tmp.name[len(STAGED_PREFIX):]))


def discard(staged: Dict[str, Path]) -> None:
    for tmp in staged.values():
        shutil.rmtree(tmp, ignore_errors=True)


def prune_versions(base_path: Path, keep: int) -> List[Path]:
    """Deletes all but the newest `keep` versions of each towerrec model (other folders in
    a shared base path are not ours); returns what went."""
    removed = []
    for name in MODELS:
        model_dir = Path(base_path) / name
        for version in versions(model_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(model_dir / str(version))
            removed.append(model_dir / str(version))
    return removed


def rollback(base_path: Path, models: List[str]) -> Dict[str, Path]:
    """Makes the previous version of each model the served one: the newest version moves
    aside to `.rolled-back-<version>-<time>` (not an integer, so no server loads it).
    Every model is checked before any is moved."""
    base_path = Path(base_path)
    with exclusive(base_path, create=False):
        found_of = {name: versions(base_path / name) for name in models}
        for name, found in found_of.items():
            if not found:
                raise DataError(f"no model '{name}' under {base_path}")
            if len(found) < 2:
                raise DataError(f"{name} has only version {found[0]}: nothing to roll back "
                                "to (nothing was rolled back)")
        moved = {}
        for name, found in found_of.items():
            newest = base_path / name / str(found[-1])
            newest.rename(newest.with_name(
                f"{ROLLED_BACK_PREFIX}{found[-1]}-{int(time.time())}"))
            moved[name] = base_path / name / str(found[-2])
        return moved


def provenance_run_dir(version_dir: Path) -> Optional[Path]:
    """The run folder an export version came from, as its PROVENANCE names it."""
    provenance = Path(version_dir) / PROVENANCE
    return Path(json.loads(provenance.read_text())["run_dir"]) if provenance.exists() else None


def latest_run_config(config, base_path: Optional[Path]):
    """`config` pointed at the run to export, add items to or retrain from: its own run, or
    the run behind the served query_tower (a retrain's generation), whichever was trained
    last. Says so when that is not its own run."""
    served = served_version(Path(base_path) / "query_tower") if base_path else None
    if served is None:
        return config
    served_run = provenance_run_dir(served)
    if served_run is None or not (served_run / MODEL_WEIGHTS).exists():
        log.warning(f"warning: the served {served} does not name a run folder that still holds "
                    f"its model; using {config.run_path}, which may not be what is served")
        return config
    own = config.run_path / MODEL_WEIGHTS
    if served_run.resolve() == config.run_path.resolve() or (
            own.exists() and own.stat().st_mtime > (served_run / MODEL_WEIGHTS).stat().st_mtime):
        return config
    log.info(f"using {served_run}: the run behind the models served from {base_path}, trained "
             f"after {config.run_path}")
    return dataclasses.replace(config, run_dir=str(served_run))
