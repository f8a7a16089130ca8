"""The `Dataset` every data source ends in (typed interaction and item frames), CSV and
Parquet reading, and validation (sources by name: `towerrec.data.sources`).

Every source ends in the same shape:

* ``interactions``: user_id (str), item_id (str), timestamp (int64), rating (float, may be
  NaN), context_text (str, may be empty).
* ``items``: item_id (str), title (str: what a person reads, the first text column), text
  (str: the configured text columns joined), one column per
  categorical attribute (str; several values joined by "|"), one per numeric attribute
  (float, NaN when unknown).

CSV cells are read as text (never guessed: an id column with a blank cell would become
floats, `90031` -> `"90031.0"`), then typed here: an empty id is an error, a numeric cell
is a number or empty (unknown), and every error names the file, the column and the row.
Texts (item text columns, contexts) are cut to MAX_TEXT_CHARS characters when read: the
encoder reads at most `encoder.sequence_length` tokens (64 by default, a few hundred
characters), and one huge cell must not cost gigabytes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List

from towerrec.config import DataConfig

import numpy as np
import pandas as pd

MULTI_VALUE_SEPARATOR = "|"
MAX_TEXT_CHARS = 10_000
# Cells that mean "no id" whatever wrote the file.
EMPTY_IDS = ("", "nan", "None", "<NA>")
# Items added after training (`towerrec add-items`, `retrain`), kept in the run folder,
# and interactions added by `towerrec retrain`.
ADDED_ITEMS = "added_items.parquet"
ADDED_INTERACTIONS = "added_interactions.parquet"


class DataError(ValueError):
    """Input data does not match the declared schema."""


@dataclasses.dataclass
class Dataset:
    interactions: pd.DataFrame
    items: pd.DataFrame
    categorical_columns: List[str]
    numeric_columns: List[str]

    @property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy()


def read_table(path: str, what: str) -> pd.DataFrame:
    """Reads a CSV or Parquet file (by extension), with errors that name the file."""
    if not path:
        raise DataError(f"no {what} file given in the config")
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{what} file is empty: {path}")
    try:
        if path.endswith(".parquet") or path.endswith(".pq"):
            frame = pd.read_parquet(path)
        else:  # text, typed by the readers below (see the module's docstring)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, ValueError) as e:
        raise DataError(f"cannot read {what} file {path}: {e}") from None
    if frame.empty:
        raise DataError(f"{what} file has no rows: {path}")
    return frame


def _require_columns(frame: pd.DataFrame, columns: List[str], what: str, path: str):
    missing = [c for c in columns if c and c not in frame.columns]
    if missing:
        raise DataError(
            f"{what} file {path} is missing column(s) {missing}; "
            f"it has {list(frame.columns)}")


def _where(what: str, path: str) -> str:
    return f"{what} file {path}" if path else what


def _cells_as_text(raw: pd.Series) -> pd.Series:
    """Every cell as a string, a missing one (NaN, None, pd.NA) as ""."""
    return raw.astype(object).where(raw.notna(), "").astype(str)


def numeric_column(frame: pd.DataFrame, column: str, what: str, path: str = "") -> pd.Series:
    """A column of numbers, float64; an empty cell is NaN (unknown), anything else that is
    not a number is an error naming the file, column and row."""
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype("float64")
    text = _cells_as_text(raw).str.strip()
    values = pd.to_numeric(text.where(text != "", None), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{_where(what, path)}: column '{column}' must be a number; row "
                        f"{row} has {raw.iloc[row]!r}")
    return values.astype("float64")


def id_column(frame: pd.DataFrame, column: str, what: str, path: str = "") -> pd.Series:
    """A column of ids as strings; an empty cell is an error naming the file and row.
    Whole-number floats (a typed file's int column with a gap) are written without '.0'."""
    raw = frame[column]
    if pd.api.types.is_float_dtype(raw):
        whole = raw.dropna()
        if (whole == np.floor(whole)).all():
            raw = raw.astype("Int64")
    ids = _cells_as_text(raw).str.strip()
    empty = ids.isin(EMPTY_IDS)
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{_where(what, path)}: row {row} has an empty {column}")
    return ids


def text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """A text column: missing cells empty, stripped, cut to MAX_TEXT_CHARS."""
    raw = frame[column]
    return _cells_as_text(raw).str.slice(0, MAX_TEXT_CHARS).str.strip()


def timestamp_column(frame: pd.DataFrame, column: str, what: str,
                     path: str = "") -> pd.Series:
    """Seconds since the epoch (int64) from numbers or dates, naming the row that is empty
    or neither."""
    raw = frame[column]
    text = _cells_as_text(raw).str.strip()
    empty = (text == "").to_numpy()
    if empty.any():
        raise DataError(f"{_where(what, path)}: column '{column}' is empty in row "
                        f"{int(np.flatnonzero(empty)[0])}")
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype("int64")
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        return numbers.astype("int64")
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(f"{_where(what, path)}: column '{column}' must be a number or a "
                        f"date; row {row} has {raw.iloc[row]!r}")
    return parsed.astype("int64") // 10**9


def load_tabular(data: DataConfig) -> Dataset:
    inter = read_table(data.interactions, "interactions")
    items = read_table(data.items, "items")
    return Dataset(interactions_frame(inter, data), items_frame(items, data),
                   list(data.categorical_columns), list(data.numeric_columns))


def interaction_columns(data: DataConfig) -> List[str]:
    """The interactions' columns as the config names them (optional roles left out)."""
    return [c for c in (data.user_id_column, data.item_id_column, data.timestamp_column,
                        data.rating_column, data.context_column) if c]


def interactions_frame(inter: pd.DataFrame, data: DataConfig, path: str = "") -> pd.DataFrame:
    """A raw interactions table (config column roles) -> the typed interactions frame."""
    path = path or data.interactions
    _require_columns(inter, interaction_columns(data), "interactions", path)
    return pd.DataFrame({
        "user_id": id_column(inter, data.user_id_column, "interactions", path),
        "item_id": id_column(inter, data.item_id_column, "interactions", path),
        "timestamp": timestamp_column(inter, data.timestamp_column, "interactions", path),
        "rating": (numeric_column(inter, data.rating_column, "interactions", path)
                   if data.rating_column else np.nan),
        "context_text": (text_column(inter, data.context_column)
                         if data.context_column else ""),
    })


def items_frame(items: pd.DataFrame, data: DataConfig, path: str = "") -> pd.DataFrame:
    """A raw items table (config column roles) -> the typed items frame."""
    path = path or data.items
    _require_columns(items, item_columns(data), "items", path)
    if not data.text_columns:
        raise DataError("data.text_columns is empty: items need at least one text column")
    item_frame = pd.DataFrame({"item_id": id_column(items, data.item_id_column, "items",
                                                    path)})
    item_frame["title"] = text_column(items, data.text_columns[0])
    item_frame["text"] = join_text(items, data.text_columns)
    for column in data.categorical_columns:
        item_frame[column] = normalize_categorical(items[column], data.categorical_separator)
    for column in data.numeric_columns:
        item_frame[column] = numeric_column(items, column, "items", path)
    return item_frame


def item_columns(data: DataConfig) -> List[str]:
    """The items' columns as the config names them."""
    return [data.item_id_column, *data.text_columns, *data.categorical_columns,
            *data.numeric_columns]


def join_text(frame: pd.DataFrame, columns: List[str]) -> pd.Series:
    parts = [text_column(frame, c) for c in columns]
    text = parts[0]
    for part in parts[1:]:
        text = text.str.cat(part, sep=". ").str.strip(". ")
    return text.str.slice(0, MAX_TEXT_CHARS)


def normalize_categorical(values: pd.Series, separator: str) -> pd.Series:
    """Multi-valued cells -> values joined by MULTI_VALUE_SEPARATOR, stripped."""
    def one(cell) -> str:
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            return ""
        parts = str(cell).split(separator) if separator else [str(cell)]
        return MULTI_VALUE_SEPARATOR.join(p.strip() for p in parts if p.strip())
    return values.map(one)


def validate(dataset: Dataset) -> None:
    """Schema checks that must pass before any training starts."""
    inter, items = dataset.interactions, dataset.items
    if inter.empty:
        raise DataError("there are no interactions (after filtering)")
    if items.empty:
        raise DataError("there are no items")
    empty = items["item_id"].isin(EMPTY_IDS)
    if empty.any():
        raise DataError(f"items: row {int(empty.idxmax())} has an empty item_id")
    duplicated = items["item_id"].duplicated()
    if duplicated.any():
        raise DataError(
            f"items: item_id {items['item_id'][duplicated].iloc[0]!r} appears more than once")
    for column in ("user_id", "item_id"):
        empty = inter[column].isin(EMPTY_IDS)
        if empty.any():
            raise DataError(f"interactions: row {int(empty.idxmax())} has an empty {column}")
    # Id vocabularies and catalogue tables are files of one id per line (exported as assets).
    for what, frame, column in (("interactions", inter, "user_id"), ("items", items, "item_id")):
        broken = frame[column].str.contains(r"[\t\n\r]", regex=True)
        if broken.any():
            raise DataError(f"{what}: row {int(broken.idxmax())} has a tab or line break in "
                            f"{column} {frame[column][broken].iloc[0]!r}")
    unknown = ~inter["item_id"].isin(set(items["item_id"]))
    if unknown.any():
        examples = sorted(set(inter["item_id"][unknown]))[:5]
        raise DataError(
            f"interactions name {int(unknown.sum())} row(s) with item_id(s) not in the "
            f"items file, e.g. {examples}")
    no_text = items["text"].str.len() == 0
    if no_text.all():
        raise DataError("items: every item has an empty text")

