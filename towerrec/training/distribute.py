"""Where training runs: the tf.distribute strategy, XLA, mixed precision's loss scaling.

The input pipeline runs on the host and hands the model numbers only (text tables and the
towers' lookups are applied in tf.data), so one training step runs, XLA-compiled, on a
TPU, on mirrored GPUs or on the CPU.

Several hosts: `training.strategy: multi_worker` is MultiWorkerMirroredStrategy over the
cluster in TF_CONFIG. The same `towerrec train` runs on every worker; the chief writes the
run folder, the others write theirs under the system's temporary folder (`worker_paths`;
all but its encoder cache removed when training ends well), and every worker backs up to
and restores from the chief's backup folder, which must be on storage they all reach
(GCS, NFS).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import STRATEGIES, ConfigError

import tensorflow as tf


def choose_strategy(name: str = "auto",
                    worker_timeout_seconds: float = 600.0) -> tf.distribute.Strategy:
    """training.strategy -> a strategy; one per name and process (a TPU is initialized
    once: initializing it again would wipe the variables already on it; the collectives of
    several workers are configured once, before TensorFlow starts)."""
    if name not in STRATEGIES:
        raise ConfigError(f"training.strategy: '{name}' is not one of {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        return _multi_worker(worker_timeout_seconds)
    return _one_host(name)


@functools.lru_cache(maxsize=None)
def _one_host(name: str) -> tf.distribute.Strategy:
    if name in ("auto", "tpu"):
        resolver = _tpu_resolver()
        if resolver is not None:
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        if name == "tpu":
            raise ConfigError(f"training.strategy is 'tpu' but no TPU was found "
                              f"(devices: {devices()})")
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(
            gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus)
    return tf.distribute.get_strategy()


@functools.lru_cache(maxsize=None)
def _multi_worker(timeout_seconds: float) -> tf.distribute.Strategy:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not JSON: {e}") from None
    if not isinstance(cluster, dict) or not cluster.get("cluster") or not cluster.get("task"):
        raise ConfigError(
            "training.strategy is 'multi_worker' but TF_CONFIG names no cluster and task, "
            'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' on the first worker')
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=timeout_seconds))
    except (ValueError, TypeError, AttributeError, tf.errors.OpError) as e:
        # A task index past the worker list, a task type the cluster lacks, a port in use.
        raise ConfigError(f"TF_CONFIG cannot start this worker: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else e!r}") from None


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run (always, but on a non-chief worker)."""
    return bool(strategy.extended.should_checkpoint)


def worker_paths(run_path: Path, strategy: tf.distribute.Strategy) -> Tuple[Path, Path]:
    """(where this process writes its run, the chief's run folder that every worker shares):
    the run folder twice on the chief; on another worker its own folder under the system's
    temporary folder, the same on every restart."""
    if not is_multi_worker(strategy) or is_chief(strategy):
        return run_path, run_path
    resolver = strategy.cluster_resolver
    root = Path(tempfile.gettempdir()) / f"towerrec-{resolver.task_type}-{resolver.task_id}"
    shared = Path(os.path.abspath(run_path))
    return root / shared.relative_to("/"), shared


# What a non-chief worker keeps of its copy once training ends well: its encoder folder
# (links to the chief's encoder and its own embedding cache, which the next run reuses).
WORKER_KEEPS = ("encoder",)


def discard_worker_copy(own: Path) -> None:
    """Removes a non-chief worker's copy of the run (`worker_paths`) but WORKER_KEEPS: it
    wrote it only because saving is a collective step, and restarts restore from the
    chief's backup, not from it. What cannot be removed is left, with a warning: the
    training it follows succeeded."""
    own = Path(own)
    if not own.is_dir():
        return
    try:
        for part in own.iterdir():
            if part.name in WORKER_KEEPS:
                continue
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part)
            else:
                part.unlink()
    except OSError as e:
        logging.getLogger("towerrec.steps").warning(
            f"this worker's copy of the run ({own}) was not removed: {e}")


def _tpu_resolver() -> Optional[tf.distribute.cluster_resolver.TPUClusterResolver]:
    """The TPU the environment names (Colab, TPU_NAME), or this TPU VM's own; else None."""
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver()
    except ValueError:  # no TPU named: it asks for a name
        pass
    if tf.config.list_physical_devices("TPU"):
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    return None


def devices() -> str:
    """This process's devices, e.g. "1 CPU, 2 GPU"."""
    kinds = [d.device_type for d in tf.config.list_logical_devices()]
    return ", ".join(f"{kinds.count(kind)} {kind}" for kind in sorted(set(kinds)))


def describe(strategy: tf.distribute.Strategy, xla: bool) -> str:
    """E.g. "MirroredStrategy, 2 replicas, XLA on" (call it outside any strategy's scope)."""
    name = ("default strategy" if strategy is tf.distribute.get_strategy()
            else type(strategy).__name__)
    replicas = strategy.num_replicas_in_sync
    if is_multi_worker(strategy):
        resolver = strategy.cluster_resolver
        name = (f"MultiWorkerMirroredStrategy ({resolver.task_type} {resolver.task_id}"
                 f"{', chief' if is_chief(strategy) else ''})")
    compiled = ("the TPU compiles the step" if isinstance(strategy, tf.distribute.TPUStrategy)
                else f"XLA {'on' if xla else 'off'}")
    return f"{name}, {replicas} replica{'s' if replicas > 1 else ''}, {compiled}"


def use_xla(jit_compile: Union[bool, str], strategy: tf.distribute.Strategy) -> bool:
    """training.jit_compile -> whether each replica compiles its loss and gradients with
    XLA ("auto": on GPU). Never under a TPUStrategy: the TPU compiles the whole step."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False
    if jit_compile == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    assert isinstance(jit_compile, bool)  # TrainingConfig allows only "auto", true, false
    return jit_compile


def loss_scaled(optimizer, mixed_precision: Optional[str]):
    """The optimizer for a precision policy: float16 gradients underflow without loss
    scaling; bfloat16 has float32's range and needs none."""
    if mixed_precision == "mixed_float16":
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer
