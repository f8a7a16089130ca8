"""`towerrec retrain`: new interactions (and items) -> a warm-started model -> a gated publish.

The served model is the source of truth: each export version records the run folder it
came from (publish.provenance_run_dir), and a retrain warm-starts from the run behind the served
`query_tower` (or the config's own run, if that was trained later). It builds a new
generation, `<run_dir>/generations/NNNN/`, a run folder of its own (the previous data plus
the new; the previous splits, the previous `recent` holdout moved into training, and a new
`recent` taken from the new interactions), trains it from the previous weights (new user
and item ids extend the vocabularies; old rows keep their index and weights), stages every
export, evaluates the staged and the published towers on the same holdout, and publishes
only if the new model is not worse beyond `retrain.tolerance`.

Nothing published is touched before the gate passes. The base path's lock and its
journaled publish (towerrec/export/publish.py) make a retrain killed at any moment leave every
published version intact, and the next writer finish a publish cut short; a retrain also
removes the generations a killed one left unfinished.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import Config, ConfigError, DataConfig
from towerrec.data.dataset import (
    ADDED_INTERACTIONS,
    ADDED_ITEMS,
    DataError,
    interaction_columns,
    interactions_frame,
    read_table,
)
from towerrec.data.splits import hold_out_last, save_splits
from towerrec.evaluation.evaluate import build_variables
from towerrec.export.export import export_models
from towerrec.export.publish import (
    discard,
    exclusive,
    latest_run_config,
    provenance_run_dir,
    prune_versions,
    publish,
    served_version,
    versions,
)
from towerrec.towers.retrieval import Vocabularies
from towerrec.training.run import Run, load_run
from towerrec.training.train import train

import numpy as np
import pandas as pd

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
GENERATIONS = "generations"
GENERATION_FILE = "generation.json"  # written when a generation has finished training
RECENT = "recent"
# The interactions' columns of a MovieLens run (the typed frame's own names).
MOVIELENS_INTERACTIONS = DataConfig(rating_column="rating", context_column="context_text")


def read_new_interactions(path: str, config: Config) -> pd.DataFrame:
    """A CSV/Parquet of new interactions in the config's interaction columns, checked:
    no missing or unknown columns, no empty ids, typed timestamps and ratings."""
    data = (MOVIELENS_INTERACTIONS if config.data.source == "movielens-100k"
            else config.data)
    raw = read_table(path, "new interactions")
    expected = interaction_columns(data)
    unknown = [c for c in raw.columns if c not in expected]
    if unknown:
        raise DataError(f"new interactions file {path} has unknown column(s) {unknown}; "
                        f"expected {expected}")
    return interactions_frame(raw, data, path)  # refuses empty ids, naming the row


def at_stage(name: str, started: float) -> None:
    log.info(f"retrain: {name} ({time.time() - started:.0f}s)")


def clear_unfinished_generations(config: Config) -> None:
    """Removes the generations a killed retrain left before they finished training."""
    generations = config.run_path / GENERATIONS
    if generations.exists():
        for folder in generations.iterdir():
            if folder.is_dir() and not (folder / GENERATION_FILE).exists():
                shutil.rmtree(folder, ignore_errors=True)


def extend_vocabularies(old: Vocabularies, train_split: pd.DataFrame) -> Vocabularies:
    """New user and item ids appended: every old id keeps its row."""
    def extended(known: List[str], seen) -> List[str]:
        return list(known) + sorted(set(seen) - set(known))
    return dataclasses.replace(old, user_ids=extended(old.user_ids, train_split["user_id"]),
                               item_ids=extended(old.item_ids, train_split["item_id"]))


def warm_start_from(previous: Run):
    """A `train(warm_start=...)` hook: copies every weight of `previous` (a `load_run`, so
    built); a table that grew (new ids) keeps its old rows, and its new rows start as the
    unknown-id row."""
    from towerrec.towers.features import OOV_INDEX

    def initialize(run: Run) -> None:
        build_variables(run)
        old_variables, new_variables = previous.model.variables, run.model.variables
        if len(old_variables) != len(new_variables):
            raise DataError("the published model's structure differs from this config's: "
                            "retrain needs the same tower settings")
        for old, new in zip(old_variables, new_variables):
            old_value = old.numpy()
            if old.shape == new.shape:
                new.assign(old_value)
            elif old.shape[1:] == new.shape[1:] and old.shape[0] < new.shape[0]:
                grown = np.repeat(old_value[OOV_INDEX:OOV_INDEX + 1],
                                  new.shape[0] - old.shape[0], axis=0)
                new.assign(np.concatenate([old_value, grown]))
            else:
                raise DataError(f"cannot warm-start {new.name}: shape {new.shape} from "
                                f"{old.shape}; retrain needs the same tower settings")
    return initialize


def holdout_metrics(run: Run, model, splits: List[str]) -> Dict[str, Dict[str, float]]:
    """{split: metrics} of `model`'s towers on `run`'s splits and catalogue (the same
    protocol as `towerrec evaluate`; text embeddings come from the shared cache)."""
    from towerrec.evaluation.evaluate import evaluate_split

    judged = dataclasses.replace(run, model=model)
    return {split: evaluate_split(judged, split) for split in splits}


def judged_splits(run: Run, names: List[str]) -> List[str]:
    """The gate splits `run` has users in; says why any other is left out."""
    judged = []
    for name in names:
        if name not in run.splits:
            log.info(f"gate: split '{name}' is not one of this run's "
                     f"({', '.join(s for s in run.splits if s != 'train')}): left out")
        elif not len(run.splits[name]):
            log.info(f"gate: split '{name}' has no held-out interactions: left out")
        else:
            judged.append(name)
    return judged


def gate(new: Dict[str, Dict[str, float]], published: Optional[Dict[str, Dict[str, float]]],
         tolerance: float) -> bool:
    """Logs both sets of figures; True when no gate split's NDCG@10 fell beyond
    `tolerance` (relative) below the published model's."""
    if published is None:
        log.info("gate: nothing published yet -> publish")
        return True
    if not new:
        log.info("gate: no gate split has held-out users, so nothing tells the models apart "
                 "-> refused, nothing published (see retrain.gate_splits)")
        return False
    passed = True
    for split in new:
        before, after = published[split]["ndcg_at_10"], new[split]["ndcg_at_10"]
        floor = before * (1 - tolerance)
        ok = after >= floor
        passed &= ok
        log.info(f"gate: {split:8s} NDCG@10 published {before:.4f}, retrained {after:.4f}, "
                 f"floor {floor:.4f} -> {'ok' if ok else 'WORSE'}  (Recall@100 "
                 f"{published[split]['recall_at_100']:.4f} -> {new[split]['recall_at_100']:.4f})")
    log.info(f"gate: {'passed -> publish' if passed else 'refused -> nothing published'}")
    return passed


def _next_generation(config: Config) -> Path:
    folder = config.run_path / GENERATIONS
    numbers = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if \
        folder.exists() else []
    return folder / f"{max(numbers, default=0) + 1:04d}"


def _write_generation_data(previous: Run, generation: Path, new_interactions: pd.DataFrame,
                           new_items: Optional[pd.DataFrame], holdout_fraction: float):
    """The generation's data (previous additions + new) and splits (previous + recent)."""
    generation.mkdir(parents=True)
    encoder = (previous.config.run_path / "encoder").resolve()
    (generation / "encoder").symlink_to(encoder, target_is_directory=True)
    for name, new in ((ADDED_ITEMS, new_items), (ADDED_INTERACTIONS, new_interactions)):
        old = previous.config.run_path / name
        frames = ([pd.read_parquet(old)] if old.exists() else []) + (
            [new] if new is not None else [])
        if frames:
            pd.concat(frames, ignore_index=True).to_parquet(generation / name, index=False)
    ranker = previous.config.run_path / "ranker"
    if (ranker / "weights.index").exists():  # the ranker is kept; its tables are rebuilt
        (generation / "ranker").mkdir()
        for path in ranker.glob("*"):
            if path.is_file():
                shutil.copy2(path, generation / "ranker" / path.name)
    earlier, recent = hold_out_last(new_interactions, holdout_fraction)
    splits = dict(previous.splits)
    # The previous generation's recent holdout is trained on now: the newest holdout takes
    # its place, and no interaction is left out of every later generation.
    splits["train"] = pd.concat([previous.splits["train"], previous.splits.get(RECENT),
                                 earlier], ignore_index=True)
    splits[RECENT] = recent
    save_splits(splits, generation / "splits")


@dataclasses.dataclass
class Retrained:
    """What retrain did: the versions published ({model: version path}; empty when the
    gate refused), the gate's metrics ("retrained" and, when a model was served,
    "published"), and the generation's folder (its run)."""
    published: Dict[str, Path]
    metrics: Dict[str, Dict[str, Dict[str, float]]]
    generation: Path


def retrain(config: Config, new_interactions: str, new_items: Optional[str] = None,
            base_path: Path = Path("models"), verbose: int = 2) -> Retrained:
    """Retrains on new data and publishes through the gate."""
    if config.training.strategy == "multi_worker":
        # Every worker would take the base path's lock, and wait there for the others.
        raise ConfigError("retrain runs on one host: training.strategy 'multi_worker' is for "
                          "`towerrec train`; retrain with another (e.g. --set "
                          "training.strategy=auto)")
    started = time.time()
    base_path = Path(base_path)
    interactions = read_new_interactions(new_interactions, config)
    with exclusive(base_path):
        clear_unfinished_generations(config)
        previous = load_run(latest_run_config(config, base_path))
        source = previous.config.run_path
        log.info(f"retrain: warm start from {source}")
        items = None
        if new_items:
            from towerrec.pipelines.add_items import read_new_items
            items = read_new_items(new_items, config, previous.catalogue["item_id"])
        known = set(previous.catalogue["item_id"]) | set(
            items["item_id"] if items is not None else [])
        unknown = sorted(set(interactions["item_id"]) - known)
        if unknown:
            raise DataError(f"new interactions file {new_interactions} names item(s) not in "
                            f"the catalogue nor the new items: {unknown[:5]}")
        key = ["user_id", "item_id", "timestamp"]
        repeated = interactions[key].merge(previous.dataset.interactions[key], on=key)
        if len(repeated):
            raise DataError(f"new interactions file {new_interactions}: {len(repeated)} "
                            f"row(s) are in the data already (was it retrained on before?), "
                            f"e.g. {repeated.iloc[0].to_dict()}")

        generation = _next_generation(config)
        _write_generation_data(previous, generation, interactions, items,
                               config.split.warm_test_fraction)
        # The published model's towers: a warm start copies its weights one for one.
        gen_config = dataclasses.replace(config, run_dir=str(generation),
                                         towers=previous.config.towers)
        at_stage("training", started)
        splits = pd.read_parquet(generation / "splits" / "train.parquet")
        run = train(gen_config, verbose=verbose, warm_start=warm_start_from(previous),
                    vocabularies=extend_vocabularies(previous.vocabularies, splits),
                    epochs=config.retrain.epochs, prior=previous.prior)
        (generation / GENERATION_FILE).write_text(json.dumps(
            {"source": str(source), "new_interactions": len(interactions),
             "new_items": 0 if items is None else len(items)}))

        at_stage("exporting", started)
        staged = export_models(run, base_path, stage_only=True)
        try:
            at_stage("gating", started)
            gate_splits = judged_splits(run, config.retrain.gate_splits)
            # The published exports came from `previous` (their provenance names it), so
            # its towers are judged here in process, on the same holdout and catalogue.
            metrics = {"retrained": holdout_metrics(run, run.model, gate_splits),
                       "published": holdout_metrics(run, previous.model, gate_splits)}
            if served_version(base_path / "query_tower") is None:
                del metrics["published"]  # nothing served yet: nothing to compare with
            if not gate(metrics["retrained"], metrics.get("published"),
                        config.retrain.tolerance):
                discard(staged)
                return Retrained({}, metrics, generation)
            at_stage("publishing", started)
            result = publish(staged, lambda name: at_stage(f"published {name}", started))
            staged = {}
        finally:
            discard(staged)
        removed = prune_versions(base_path, config.retrain.keep_versions)
        _prune_generations(config, base_path)
        log.info(f"retrain: published {', '.join(f'{n} {p.name}' for n, p in result.items())}"
                 + (f"; removed {len(removed)} old version(s)" if removed else "")
                 + f" ({time.time() - started:.0f}s)")
        return Retrained(result, metrics, generation)


def _prune_generations(config: Config, base_path: Path) -> None:
    """Deletes generations that no kept export version came from."""
    used = {run_dir.resolve() for model_dir in base_path.iterdir() if model_dir.is_dir()
            for version in versions(model_dir)
            if (run_dir := provenance_run_dir(model_dir / str(version))) is not None}
    for folder in (config.run_path / GENERATIONS).glob("[0-9]*"):
        if folder.resolve() not in used:
            shutil.rmtree(folder, ignore_errors=True)
