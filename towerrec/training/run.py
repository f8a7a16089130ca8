"""A run: the config, data, splits, text inputs, vocabularies and model every step stands
on; `prepare` builds one (untrained), `load_run` one whose model was trained and saved."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import Config, from_dict, to_dict
from towerrec.data.dataset import MULTI_VALUE_SEPARATOR, Dataset
from towerrec.data.features import TextInputs, catalogue_features
from towerrec.data.sources import load_dataset
from towerrec.data.splits import get_splits
from towerrec.evaluation.evaluate import build_variables
from towerrec.stages import stage
from towerrec.towers.features import numeric_stats
from towerrec.towers.retrieval import TwoTowerModel, Vocabularies, build_two_tower
from towerrec.towers.text_encoder import export_text_encoder
from towerrec.training.prior import NO_PRIOR, PriorSettings, load_prior, save_prior

import numpy as np
import pandas as pd
import tensorflow as tf

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows

# The run folder's id vocabularies, one file per lookup (read by the lookups, and carried
# by the exports as assets).
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
        log.warning(f"the model in {directory} was trained with towers: {', '.join(changed)}; "
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
    # JSON gives each (mean, std) as a list.
    vocabularies.numeric = {k: (mean, std) for k, (mean, std) in vocabularies.numeric.items()}
    run = prepare(config, encoder_dir, vocabularies=vocabularies)
    build_variables(run)
    status = tf.train.Checkpoint(model=run.model).read(str(directory / "weights"))
    status.expect_partial()
    run.prior = load_prior(directory, config.prior)
    return run
