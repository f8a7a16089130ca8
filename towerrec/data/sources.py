"""The data sources by name (`data.source`), and `load_dataset`: the configured source,
the items and interactions added since (add-items, retrain), validated."""
from __future__ import annotations

from typing import Callable, Dict

from towerrec.config import Config, DataConfig
from towerrec.data.dataset import (
    ADDED_INTERACTIONS,
    ADDED_ITEMS,
    DataError,
    Dataset,
    item_columns,
    items_frame,
    load_tabular,
    text_column,
    validate,
)
from towerrec.data.movielens import load_movielens_100k
from towerrec.data.synthetic import load_synthetic

import pandas as pd

# data.source -> DataConfig -> Dataset. A new source is a function here.
SOURCES: Dict[str, Callable[[DataConfig], Dataset]] = {
    "movielens-100k": lambda data: load_movielens_100k(data.path),
    "csv": load_tabular,
    "parquet": load_tabular,
    "synthetic": load_synthetic,
}


def load_dataset(config: Config) -> Dataset:
    """Reads the configured source and validates it before anything trains."""
    data = config.data
    if data.source not in SOURCES:
        raise DataError(f"data.source '{data.source}' is not one of: {', '.join(SOURCES)}")
    dataset = SOURCES[data.source](data)
    added = config.run_path / ADDED_ITEMS
    if added.exists():
        added = pd.read_parquet(added)
        if "title" not in added:  # written before items had a title
            added.insert(1, "title", added["text"])
        dataset.items = pd.concat([dataset.items, added], ignore_index=True)
    added = config.run_path / ADDED_INTERACTIONS
    if added.exists():
        dataset.interactions = pd.concat([dataset.interactions, pd.read_parquet(added)],
                                         ignore_index=True)
    if data.min_rating is not None:
        keep = dataset.interactions["rating"] >= float(data.min_rating)
        dataset.interactions = dataset.interactions[keep].reset_index(drop=True)
    validate(dataset)
    return dataset


def catalogue_items(raw: pd.DataFrame, config: Config, path: str) -> pd.DataFrame:
    """Items as read from a file (`path`, for errors) in the columns the config's source
    declares -> catalogue rows as the run's own (item_id, text, attributes), checked: no
    unknown or missing column, no empty title, numbers that are numbers."""
    movielens = config.data.source == "movielens-100k"
    if movielens:
        from towerrec.data.movielens import ITEM_COLUMNS as expected
    else:
        expected = item_columns(config.data)
    unknown = [c for c in raw.columns if c not in expected]
    missing = [c for c in expected if c not in raw.columns]
    if unknown or missing:
        raise DataError(f"items file {path} has " + "; ".join(
            part for part in (unknown and f"unknown column(s) {unknown}",
                              missing and f"no column(s) {missing}") if part)
            + f"; expected {expected}")
    title = expected[1] if movielens else config.data.text_columns[0]
    empty = text_column(raw, title).str.len() == 0  # as read, before a year is appended
    if empty.any():
        raise DataError(f"items file {path}: row {int(empty.to_numpy().nonzero()[0][0])} "
                        f"has an empty {title}")
    if movielens:
        from towerrec.data.movielens import movielens_items
        return movielens_items(raw, path)
    return items_frame(raw, config.data, path)
