"""`towerrec train`: config -> data -> splits -> encoder -> towers -> fit -> saved weights."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import Config, ConfigError
from towerrec.data.features import (
    Features,
    Indexed,
    tf_dataset,
    training_examples,
)
from towerrec.stages import stage
from towerrec.towers.optimizers import LazyAdam
from towerrec.towers.retrieval import Vocabularies
from towerrec.training.distribute import (
    choose_strategy,
    describe,
    discard_worker_copy,
    is_multi_worker,
    loss_scaled,
    use_xla,
    worker_paths,
)
from towerrec.training.prior import (
    PriorSettings,
    configured_prior,
)
from towerrec.training.run import Run, prepare, save_model

import numpy as np
import tensorflow as tf

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows


def training_features(run: Run) -> Features:
    """Training examples joined with the candidate features of their items (each item's
    features held once, indexed by the examples' catalogue rows)."""
    examples = training_examples(run.splits["train"], run.catalogue["item_id"],
                                 run.config.towers.history_length)
    rows = examples.pop("item_row")
    assert isinstance(rows, np.ndarray)  # catalogue rows [n] (see training_examples)
    for name, values in run.catalogue.items():
        examples[name] = Indexed(values, rows)
    return examples


def outside_strategy(function, *args):
    """function(*args) run where no distribution strategy is in scope. Keras calls
    callbacks inside the training strategy's scope, where the evaluation's host tables
    would become variables mirrored onto every device; a strategy scope is per thread."""
    result = {}

    def call():
        try:
            result["value"] = function(*args)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=call, name="towerrec-evaluation")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class ModelError(ValueError):
    """A model that must not be saved or exported: training diverged (non-finite loss or
    weights)."""


def non_finite_weights(model: tf.keras.Model) -> list:
    """Names of the model's variables holding NaN or infinity."""
    return [v.name for v in model.weights if v.dtype.is_floating
            and not np.isfinite(v.numpy()).all()]


def check_finite(embeddings: np.ndarray, what: str) -> np.ndarray:
    """`embeddings`, if every value is finite; else ModelError (nothing is exported)."""
    bad = ~np.isfinite(embeddings).all(axis=-1)
    if bad.any():
        raise ModelError(f"{int(bad.sum())} of {len(bad)} {what} are not finite (NaN or "
                         "infinity): the model diverged in training; retrain it with a "
                         "lower training.learning_rate")
    return embeddings


class WorkerLost(ModelError):
    """Multi-worker training stopped: a worker died or stopped answering."""


# What a collective raises when another worker is gone: the cluster's health check aborts
# it (unavailable, cancelled), or it times out (training.worker_timeout_seconds).
COLLECTIVE_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                       tf.errors.CancelledError, tf.errors.AbortedError)
BACKUP_DIR = "backup"


@contextlib.contextmanager
def _worker_losses(strategy: tf.distribute.Strategy, timeout_seconds: float, shared: Path):
    """Under multi-worker training, a collective that fails because another worker is gone
    (while variables are broadcast, or in a training step) -> one-line WorkerLost."""
    try:
        yield
    except COLLECTIVE_FAILURES as e:
        if not is_multi_worker(strategy):
            raise
        raise WorkerLost(
            f"training stopped: another worker of the cluster died or did not answer "
            f"within training.worker_timeout_seconds ({timeout_seconds:g}s): "
            f"{type(e).__name__}: {_what_failed(e)}. Restart "
            f"every worker with the same command: training resumes from the last epoch "
            f"backed up in {shared / BACKUP_DIR}.") from None


def _what_failed(error: tf.errors.OpError) -> str:
    """The words of a collective's error that say what happened (which worker is gone),
    without the graph's stack."""
    lines = [line.strip() for line in str(error.message).splitlines()]
    lines = [line for line in lines if line and not line.startswith(
        ("File ", "[[", "Detected at node", "Graph execution error"))]
    aborted = next((i for i, line in enumerate(lines) if "aborted by" in line), None)
    if aborted is not None:  # "... aborted by: ... unhealthy ...:" and the task's name
        return " ".join(lines[aborted:aborted + 2])
    return lines[-1] if lines else "no message"


def _chiefs_encoder(chiefs: Path, own: Path) -> Optional[Path]:
    """A non-chief worker's encoder folder: links to the chief's exported encoder, when it
    has one (all workers must encode alike), and a cache of its own (the chief's is not
    this worker's to write). None: the worker exports the configured preset itself."""
    if not (chiefs / "encoder").exists():
        return None
    own.mkdir(parents=True, exist_ok=True)
    for part in chiefs.iterdir():
        link = own / part.name
        if part.name != "embedding_cache" and not link.exists():
            link.symlink_to(part.resolve())
    return own


class _ResumeReport(tf.keras.callbacks.Callback):
    """Says when training resumes from a backup (BackupAndRestore) instead of epoch 1."""

    def __init__(self, record: dict):
        super().__init__()
        self.record, self.first = record, True

    def on_epoch_begin(self, epoch, logs=None):
        if self.first and epoch > 0:
            log.info(f"resumed from the backup: training continues at epoch {epoch + 1}")
            self.record["resumed_at_epoch"] = epoch + 1
        self.first = False


class _SteadyThroughput(tf.keras.callbacks.Callback):
    """Examples per second of training steps, leaving out each epoch's first batches (the
    step's tracing and warm-up) and anything between epochs (evaluation, checkpoints)."""

    SKIP = 20

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size, self.examples, self.seconds = batch_size, 0, 0.0
        self._since = None

    @property
    def rate(self) -> Optional[float]:
        return self.examples / self.seconds if self.seconds > 0 else None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch + 1 == self.SKIP:
            self._since = now
        elif batch + 1 > self.SKIP and self._since is not None:
            self.examples += self.batch_size
            self.seconds += now - self._since
            self._since = now

    def on_epoch_end(self, epoch, logs=None):
        self._since = None


# The held-out splits of known users evaluated after every epoch, when the run has them.
EPOCH_SPLITS = ("warm", "future")


class _EpochEvaluation(tf.keras.callbacks.Callback):
    """After each epoch: a held-out split's metrics in the log line and in TensorBoard."""

    def __init__(self, run: Run, log_dir: Path, split: str):
        super().__init__()
        self.run = run
        self.split = split
        self.writer = tf.summary.create_file_writer(str(log_dir / "evaluation"))

    def on_epoch_end(self, epoch, logs=None):
        from towerrec.evaluation.evaluate import evaluate_split
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            return  # a diverged model: training stops (TerminateOnNaN), nothing to measure
        with stage(f"evaluate {self.split} after an epoch"):
            metrics = outside_strategy(evaluate_split, self.run, self.split)
        with self.writer.as_default():
            for name in ("recall_at_10", "recall_at_100", "ndcg_at_10"):
                tf.summary.scalar(f"{self.split}/{name}", metrics[name], step=epoch)
                if logs is not None:
                    logs[f"{self.split}_{name}"] = metrics[name]

    def on_train_end(self, logs=None):
        self.writer.close()


def train(config: Config, encoder_dir: Optional[Path] = None, verbose: int = 2,
          warm_start: Optional[Callable[[Run], None]] = None,
          vocabularies: Optional[Vocabularies] = None,
          epochs: Optional[int] = None, prior: Optional[PriorSettings] = None) -> Run:
    """Trains the two towers and writes weights, vocabularies, logs and checkpoints, under
    the strategy, XLA and precision settings of `config.training`.

    `warm_start(run)`, when given, sets the new model's weights before training (retrain);
    `vocabularies` then are the extended ones it was built with. `prior`: the item prior
    saved with the model (default: the config's, or none when the config asks for it to
    be calibrated, which towerrec.training.calibrate does after training)."""
    t = config.training
    if t.strategy == "multi_worker" and config.prior.calibrate and prior is None:
        # Its second training (on a validation split) crashed a worker here (2026-12-04).
        raise ConfigError("training.strategy 'multi_worker' does not calibrate the item "
                          "prior yet: set prior.calibrate: false (and the prior's weights and "
                          "half-life), or calibrate with a one-host run")
    strategy = choose_strategy(t.strategy, t.worker_timeout_seconds)
    own, shared = worker_paths(config.run_path, strategy)
    if own != config.run_path:  # a non-chief worker: its own folder
        config = dataclasses.replace(config, run_dir=str(own))
        if encoder_dir is None:
            encoder_dir = _chiefs_encoder(shared / "encoder", own / "encoder")
    xla = use_xla(t.jit_compile, strategy)
    if t.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"training.batch_size {t.batch_size} does not split evenly over "
                          f"the replicas ({describe(strategy, xla)})")
    lost_worker = functools.partial(_worker_losses, strategy, t.worker_timeout_seconds, shared)
    with lost_worker():  # variables are broadcast from the chief
        run = prepare(config, encoder_dir, vocabularies=vocabularies, strategy=strategy)
    run.prior = prior or configured_prior(config.prior)
    if warm_start is not None:
        warm_start(run)
    with stage("build features") as record:
        features = training_features(run)
        examples = record["examples"] = len(features["item_id"])
        data = tf_dataset(features, run.text_inputs, t.batch_size, run.model.preprocess,
                          shuffle_seed=t.seed, drop_remainder=True)
        del features
        if is_multi_worker(strategy):  # each worker reads its share of every global batch
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            data = data.with_options(options)
    log.info(f"training on {examples} interactions, "
             f"{len(run.vocabularies.user_ids)} users, {len(run.vocabularies.item_ids)} items; "
             f"encoder {'fine-tuned' if config.encoder.fine_tune else 'frozen, cached'}; "
             f"{describe(strategy, xla)}, {t.mixed_precision or 'float32'}")
    with strategy.scope(), lost_worker():
        optimizer = loss_scaled(LazyAdam(t.learning_rate), t.mixed_precision)
        run.model.compile(optimizer=optimizer, xla=xla)
    run_path = config.run_path
    log_dir = run_path / "logs" / time.strftime("%Y%m%d-%H%M%S")
    checkpoint = tf.train.Checkpoint(model=run.model)
    manager = tf.train.CheckpointManager(checkpoint, str(run_path / "checkpoints"),
                                         max_to_keep=3)
    callbacks = [
        tf.keras.callbacks.TensorBoard(log_dir=str(log_dir), update_freq="epoch"),
        tf.keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: np.isfinite((logs or {}).get("loss", 0.0))
            and manager.save()),
    ]
    # On every worker, the non-chiefs' too: a worker that skipped it would wait for the
    # chief's at the next collective, and a long evaluation would pass for a lost worker.
    for split in (s for s in EPOCH_SPLITS if s in run.splits):
        callbacks.insert(0, _EpochEvaluation(run, log_dir, split))
    if is_multi_worker(strategy):
        # Every epoch, into the chief's folder, which every worker reads when restarted;
        # deleted when training ends well.
        callbacks.insert(0, tf.keras.callbacks.BackupAndRestore(str(shared / BACKUP_DIR)))
    # First: a NaN loss stops training at once, before anything evaluates or saves.
    callbacks.insert(0, tf.keras.callbacks.TerminateOnNaN())
    epochs = epochs or t.epochs
    throughput = _SteadyThroughput(t.batch_size)
    with stage("train", examples=examples // t.batch_size * t.batch_size * epochs,
               epochs=epochs) as record:
        with lost_worker():
            history = run.model.fit(
                data, epochs=epochs, verbose=verbose,
                callbacks=[throughput, *callbacks, _ResumeReport(record)])
        if throughput.rate:
            record["steady_examples_per_second"] = round(throughput.rate)
    losses = history.history.get("loss", [])
    diverged = non_finite_weights(run.model)
    if diverged or not np.isfinite(losses).all():
        raise ModelError(
            f"training diverged: the loss became {losses[-1] if losses else 'NaN'} in epoch "
            f"{len(losses)} (training.learning_rate {t.learning_rate:g}, "
            f"training.temperature {t.temperature:g}); {len(diverged)} variable(s) are not "
            f"finite. Nothing was saved: {run_path / 'model'} is as it was.")
    save_model(run)
    if own != shared:
        discard_worker_copy(own)
    return run


