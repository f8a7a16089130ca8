"""Seeded, saved splits, by one of two protocols (`split.protocol`).

"per_user" (the default):

* cold_user: every interaction of a random fraction of users; those users never train.
* cold_item: every interaction (of the remaining users) with a random fraction of items;
  those items never train.
* warm: for each remaining user, the last fraction of their interactions in time.
* train: the rest.

"future" (leave the future out, as a deployed recommender lives):

* train: every interaction before one global time cut, the first (1 - future_fraction) of
  all interactions in time (ties in time broken by user and item id).
* future: the interactions after the cut of users and items that appear before it.

`validation_splits` carves the same held-out splits out of the training data, so that
settings are chosen without looking at the test.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict

from towerrec.config import Config, SplitConfig
from towerrec.data.dataset import (
    DataError,
    Dataset,
    id_column,
    numeric_column,
    read_table,
    text_column,
    timestamp_column,
)

import numpy as np
import pandas as pd


def make_splits(dataset: Dataset, config: Config) -> Dict[str, pd.DataFrame]:
    """Returns {"train": ..., and the held-out splits of `split.protocol`} (or of the
    explicit split files)."""
    if config.split.train_file:
        return _explicit_splits(dataset, config)
    return carve(dataset.interactions, config.split)


def carve(interactions: pd.DataFrame, split: SplitConfig) -> Dict[str, pd.DataFrame]:
    """{"train": ..., held-out splits} of `interactions` by the protocol of `split`."""
    if split.protocol == "future":
        return future_split(interactions, split.future_fraction)
    return per_user_splits(interactions, split)


def validation_splits(train: pd.DataFrame, split: SplitConfig) -> Dict[str, pd.DataFrame]:
    """The training data carved as the test was (another seed for the random choices):
    {"train": what a model tuned on it trains on, held-out splits to choose settings by}."""
    return carve(train, dataclasses.replace(split, seed=split.seed + 1))


def per_user_splits(interactions: pd.DataFrame, split: SplitConfig
                    ) -> Dict[str, pd.DataFrame]:
    rng = np.random.default_rng(split.seed)
    inter = interactions.sort_values(["user_id", "timestamp"], kind="stable")

    users = np.sort(inter["user_id"].unique())
    cold_users = set(rng.choice(users, int(round(len(users) * split.cold_user_fraction)),
                                replace=False))
    is_cold_user = inter["user_id"].isin(cold_users)

    items = np.sort(inter["item_id"].unique())
    cold_items = set(rng.choice(items, int(round(len(items) * split.cold_item_fraction)),
                                replace=False))
    is_cold_item = inter["item_id"].isin(cold_items) & ~is_cold_user

    train, warm = hold_out_last(inter[~is_cold_user & ~is_cold_item], split.warm_test_fraction)
    return {
        "train": train,
        "warm": warm,
        "cold_item": inter[is_cold_item].reset_index(drop=True),
        "cold_user": inter[is_cold_user].reset_index(drop=True),
    }


def future_split(interactions: pd.DataFrame, fraction: float) -> Dict[str, pd.DataFrame]:
    """One global time cut: {"train": the first (1 - fraction) of the interactions in time,
    "future": the rest, kept to users and items of "train" and to pairs the user had not
    had before (those are excluded from the ranking, so they could never be found)}. Ties
    in time are ordered by user and item id, so the cut is the same on every run."""
    ordered = interactions.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    cut = len(ordered) - int(np.floor(len(ordered) * fraction))
    if cut <= 0 or cut >= len(ordered):
        raise DataError(f"split.future_fraction {fraction} leaves no interaction on one side "
                        f"of the cut ({len(ordered)} interactions)")
    train, after = ordered.iloc[:cut], ordered.iloc[cut:]
    known = after["user_id"].isin(set(train["user_id"])) & after["item_id"].isin(
        set(train["item_id"]))
    had = pd.MultiIndex.from_frame(train[["user_id", "item_id"]])
    known &= ~pd.MultiIndex.from_frame(after[["user_id", "item_id"]]).isin(had)
    return {"train": train.reset_index(drop=True),
            "future": after[known].reset_index(drop=True)}


def hold_out_last(interactions: pd.DataFrame, fraction: float):
    """Per user, the last `fraction` of interactions in time -> (earlier, later)."""
    interactions = interactions.sort_values(["user_id", "timestamp"], kind="stable")
    position = interactions.groupby("user_id").cumcount()
    count = interactions.groupby("user_id")["item_id"].transform("size")
    later = position >= count - np.floor(count * fraction).astype(int)
    return (interactions[~later].reset_index(drop=True),
            interactions[later].reset_index(drop=True))


def _explicit_splits(dataset: Dataset, config: Config) -> Dict[str, pd.DataFrame]:
    """Train and test given as files with the interactions' columns (as the config names
    them; MovieLens: user_id, item_id, timestamp, context_text)."""
    data = config.data
    roles = {data.user_id_column: "user_id", data.item_id_column: "item_id",
             data.timestamp_column: "timestamp"}
    if data.context_column:
        roles[data.context_column] = "context_text"
    if data.rating_column:
        roles[data.rating_column] = "rating"

    def load(path: str) -> pd.DataFrame:
        raw = read_table(path, "split").rename(columns=roles)
        missing = [c for c in ("user_id", "item_id", "timestamp") if c not in raw.columns]
        if missing:
            raise DataError(f"split file {path} is missing column(s) {missing}")
        frame = raw.copy()  # other columns (e.g. rating) kept as they were read
        frame["user_id"] = id_column(raw, "user_id", "split", path)
        frame["item_id"] = id_column(raw, "item_id", "split", path)
        frame["timestamp"] = timestamp_column(raw, "timestamp", "split", path)
        frame["context_text"] = (text_column(raw, "context_text")
                                 if "context_text" in raw.columns else "")
        if "rating" in raw.columns:
            frame["rating"] = numeric_column(raw, "rating", "split", path)
        return frame

    splits = {"train": load(config.split.train_file)}
    for name, path in config.split.test_files.items():
        splits[name] = load(path)
    known = set(dataset.item_ids)
    for name, frame in splits.items():
        unknown = ~frame["item_id"].isin(known)
        if unknown.any():
            raise DataError(f"split '{name}' names item_ids not in the items file, e.g. "
                            f"{sorted(set(frame['item_id'][unknown]))[:5]}")
    return splits


def save_splits(splits: Dict[str, pd.DataFrame], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(directory / f"{name}.parquet", index=False)
    summary = {name: {"interactions": len(f), "users": int(f["user_id"].nunique()),
                      "items": int(f["item_id"].nunique())} for name, f in splits.items()}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))


def load_splits(directory: Path) -> Dict[str, pd.DataFrame]:
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise DataError(f"no saved splits in {directory}: run `towerrec train` first")
    return {f.stem: pd.read_parquet(f) for f in files}


def get_splits(dataset: Dataset, config: Config) -> Dict[str, pd.DataFrame]:
    """The run's saved splits if they exist, else new ones, saved for every later step."""
    directory = config.run_path / "splits"
    if (directory / "train.parquet").exists():
        return load_splits(directory)
    splits = make_splits(dataset, config)
    save_splits(splits, directory)
    return splits
