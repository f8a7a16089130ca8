"""`towerrec train`: config -> data -> splits -> encoder -> towers -> fit -> saved weights."""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import Config, ConfigError, from_dict, to_dict
from towerrec.data.dataset import Dataset, load_dataset
from towerrec.data.features import (
    Indexed,
    TextInputs,
    catalogue_features,
    tf_dataset,
    training_examples,
)
from towerrec.data.splits import get_splits
from towerrec.stages import stage
from towerrec.towers.optimizers import LazyAdam
from towerrec.towers.retrieval import TwoTowerModel, Vocabularies, build_two_tower
from towerrec.towers.text_encoder import export_text_encoder
from towerrec.training.distribute import choose_strategy, describe, loss_scaled, use_xla
from towerrec.training.prior import (
    NO_PRIOR,
    PriorSettings,
    configured_prior,
    load_prior,
    save_prior,
)

import numpy as np
import pandas as pd
import tensorflow as tf

# The run folder's id vocabularies, one file per lookup (read by the lookups, and carried
# by the exports as assets).
log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
VOCABULARY_DIR = "vocabulary"


@dataclasses.dataclass
class Run:
    """Everything a trained (or about to train) model stands on."""
    config: Config
    dataset: Dataset
    splits: Dict[str, pd.DataFrame]
    text_inputs: TextInputs
    vocabularies: Vocabularies
    catalogue: Dict[str, np.ndarray]
    model: TwoTowerModel
    # The item prior retrieval adds to the towers' scores (towerrec.training.prior).
    prior: PriorSettings = NO_PRIOR


def vocabularies_from(dataset: Dataset, train: pd.DataFrame) -> Vocabularies:
    from towerrec.data.dataset import MULTI_VALUE_SEPARATOR
    from towerrec.towers.features import numeric_stats

    items = dataset.items
    categorical = {}
    for name in dataset.categorical_columns:
        values = items[name].str.split(MULTI_VALUE_SEPARATOR).explode()
        categorical[name] = sorted(v for v in values.dropna().unique() if v)
    return Vocabularies(
        user_ids=sorted(train["user_id"].unique()),
        item_ids=sorted(train["item_id"].unique()),
        catalogue_ids=items["item_id"].tolist(),
        categorical=categorical,
        numeric={name: numeric_stats(items[name].to_numpy())
                 for name in dataset.numeric_columns})


def prepare(config: Config, encoder_dir: Optional[Path] = None,
            vocabularies: Optional[Vocabularies] = None,
            strategy: Optional[tf.distribute.Strategy] = None) -> Run:
    """Loads data and splits, exports the encoder once, builds the (untrained) model, its
    weights in `strategy`'s scope (None: the default strategy).

    `vocabularies` (those a model was trained with) keep the layers' shapes when the
    catalogue has grown since; the history text table always covers today's catalogue.
    """
    tf.keras.utils.set_random_seed(config.training.seed)
    with stage("load data and splits") as record:
        dataset = load_dataset(config)
        splits = get_splits(dataset, config)
        record.update(interactions=len(dataset.interactions), items=len(dataset.items))
    encoder_dir = Path(encoder_dir or config.run_path / "encoder")
    export_text_encoder(encoder_dir, config.encoder.preset, config.encoder.sequence_length)
    text_inputs = TextInputs(encoder_dir, config.encoder.fine_tune, config.encoder.batch_size)
    if vocabularies is None:
        vocabularies = vocabularies_from(dataset, splits["train"])
    else:
        vocabularies = dataclasses.replace(
            vocabularies, catalogue_ids=dataset.items["item_id"].tolist())
    catalogue = catalogue_features(dataset)
    catalogue_text = embed_stage("encode catalogue", text_inputs, catalogue["item_text"])
    model = build_two_tower(
        vocabularies, catalogue_text, config.towers, config.training,
        encoder_path=str(encoder_dir / "encoder") if config.encoder.fine_tune else None,
        strategy=strategy, vocabulary_dir=config.run_path / VOCABULARY_DIR)
    return Run(config, dataset, splits, text_inputs, vocabularies, catalogue, model)


def encode(config: Config, encoder_dir: Optional[Path] = None) -> Dict[str, int]:
    """`towerrec encode`: fills the run's encoder cache with every catalogue text and every
    distinct context, so that a later step finds them encoded (a killed encode resumes
    where it stopped). Returns the counts of distinct texts."""
    dataset = load_dataset(config)
    encoder_dir = Path(encoder_dir or config.run_path / "encoder")
    export_text_encoder(encoder_dir, config.encoder.preset, config.encoder.sequence_length)
    text_inputs = TextInputs(encoder_dir, config.encoder.fine_tune, config.encoder.batch_size)
    counts = {}
    for name, texts in (("catalogue", dataset.items["text"]),
                        ("contexts", dataset.interactions["context_text"])):
        texts = pd.unique(texts.to_numpy(dtype=object))
        embed_stage(f"encode {name}", text_inputs, texts)
        counts[name] = len(texts)
    return counts


def embed_stage(name: str, text_inputs: TextInputs, texts) -> np.ndarray:
    """text_inputs.embed(texts) measured as a stage that also counts the texts it had to
    encode (the rest came from the cache)."""
    with stage(name, texts=len(texts)) as record:
        before = text_inputs.encoder.encoded
        embedded = text_inputs.embed(texts)
        record["encoded"] = text_inputs.encoder.encoded - before
    return embedded


def training_features(run: Run) -> Dict[str, object]:
    """Training examples joined with the candidate features of their items (each item's
    features held once, indexed by the examples' catalogue rows)."""
    examples = training_examples(run.splits["train"], run.catalogue["item_id"],
                                 run.config.towers.history_length)
    rows = examples.pop("item_row")
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
    strategy = choose_strategy(t.strategy)
    xla = use_xla(t.jit_compile, strategy)
    if t.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"training.batch_size {t.batch_size} does not split evenly over "
                          f"the replicas ({describe(strategy, xla)})")
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
    log.info(f"training on {examples} interactions, "
             f"{len(run.vocabularies.user_ids)} users, {len(run.vocabularies.item_ids)} items; "
             f"encoder {'fine-tuned' if config.encoder.fine_tune else 'frozen, cached'}; "
             f"{describe(strategy, xla)}, {t.mixed_precision or 'float32'}")
    with strategy.scope():
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
    for split in (s for s in EPOCH_SPLITS if s in run.splits):
        callbacks.insert(0, _EpochEvaluation(run, log_dir, split))
    # First: a NaN loss stops training at once, before anything evaluates or saves.
    callbacks.insert(0, tf.keras.callbacks.TerminateOnNaN())
    epochs = epochs or t.epochs
    throughput = _SteadyThroughput(t.batch_size)
    with stage("train", examples=examples // t.batch_size * t.batch_size * epochs,
               epochs=epochs) as record:
        history = run.model.fit(data, epochs=epochs, callbacks=[throughput, *callbacks],
                                verbose=verbose)
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
    return run


def save_model(run: Run) -> None:
    directory = run.config.run_path / "model"
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=run.model).write(str(directory / "weights"))
    (directory / "vocabularies.json").write_text(
        json.dumps(dataclasses.asdict(run.vocabularies)))
    (directory / "config.json").write_text(json.dumps(to_dict(run.config), indent=2))
    save_prior(run.prior, directory)


def trained_towers(config: Config, directory: Path) -> Config:
    """`config` with the towers section that the model saved in `directory` was trained
    with: its weights fit those settings only. A model saved before
    `towers.history_encoder` existed pooled its history by mean."""
    path = directory / "config.json"
    if not path.exists():
        return config
    saved = dict(json.loads(path.read_text()).get("towers", {}))
    saved.setdefault("history_encoder", "mean")
    towers = from_dict({"towers": saved}).towers
    if towers != config.towers:
        changed = [f"{f.name}={getattr(towers, f.name)}" for f in dataclasses.fields(towers)
                   if getattr(towers, f.name) != getattr(config.towers, f.name)]
        log.info(f"the model in {directory} was trained with towers: {', '.join(changed)}; "
                 "using those settings")
    return dataclasses.replace(config, towers=towers)


def load_run(config: Config, encoder_dir: Optional[Path] = None) -> Run:
    """The trained model of this config's run folder, with its data and splits. The
    towers are built as the model was trained (`trained_towers`), whatever the config
    says of them now."""
    directory = config.run_path / "model"
    if not (directory / "weights.index").exists():
        raise FileNotFoundError(
            f"no trained model in {directory}: run `towerrec train --config ...` first")
    config = trained_towers(config, directory)
    vocabularies = Vocabularies(**json.loads((directory / "vocabularies.json").read_text()))
    vocabularies.numeric = {k: tuple(v) for k, v in vocabularies.numeric.items()}
    run = prepare(config, encoder_dir, vocabularies=vocabularies)
    from towerrec.evaluation.evaluate import candidate_embeddings
    candidate_embeddings(run)  # builds the variables before they are restored
    status = tf.train.Checkpoint(model=run.model).read(str(directory / "weights"))
    status.expect_partial()
    run.prior = load_prior(directory, config.prior)
    return run
