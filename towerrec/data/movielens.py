"""MovieLens-100K, offline (the RecBole wheel's atomic files) or from a GroupLens folder.

The request context of an interaction is written as words from the user's profile and the
time of the request ("a 24 year old man, technician, Tuesday evening"), so that a new user
who brings only that sentence can be served.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Dict

from towerrec.data.dataset import (
    MULTI_VALUE_SEPARATOR,
    DataError,
    Dataset,
    id_column,
    numeric_column,
    text_column,
)

import numpy as np
import pandas as pd

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
GROUPLENS_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western"]
GENDER_WORDS = {"M": "man", "F": "woman"}


def cache_dir() -> Path:
    return Path(os.environ.get("TOWERREC_CACHE", Path.home() / ".cache" / "towerrec"))


def load_movielens_100k(path: str = "") -> Dataset:
    """Loads ML-100K from `path` (GroupLens folder, RecBole folder or wheel) or the cache."""
    files = _read_files(path)
    if "u.data" in files:
        inter, items, users = _parse_grouplens(files)
    else:
        inter, items, users = _parse_recbole(files)
    inter = inter.merge(users, on="user_id", how="left")
    inter["context_text"] = context_texts(inter)
    inter = inter[["user_id", "item_id", "timestamp", "rating", "context_text"]]
    return Dataset(inter, movielens_items(items), categorical_columns=["genres"],
                   numeric_columns=["year"])


ITEM_COLUMNS = ["item_id", "title", "genres", "year"]


def movielens_items(items: pd.DataFrame, path: str = "") -> pd.DataFrame:
    """item_id, title, genres ("a|b"), year -> the items frame; text "Title (year). a, b".
    An empty year is unknown; a year that is not a number is an error naming the row."""
    items = pd.DataFrame({
        "item_id": id_column(items, "item_id", "items", path),
        "title": text_column(items, "title"), "genres": text_column(items, "genres"),
        "year": numeric_column(items, "year", "items", path)})
    year = items["year"].map(lambda y: f" ({int(y)})" if y == y else "")
    items["title"] = items["title"] + year
    items["text"] = items["title"] + ". " + items["genres"].str.replace(
        MULTI_VALUE_SEPARATOR, ", ")
    return items[["item_id", "title", "text", "genres", "year"]]


def _read_files(path: str) -> Dict[str, bytes]:
    candidates = [Path(path)] if path else [cache_dir() / RECBOLE_WHEEL, _installed_recbole()]
    for candidate in candidates:
        if candidate is None or not candidate.exists():
            continue
        if candidate.is_file() and zipfile.is_zipfile(candidate):
            with zipfile.ZipFile(candidate) as wheel:
                return {name[len(RECBOLE_PREFIX):]: wheel.read(name)
                        for name in wheel.namelist() if name.startswith(RECBOLE_PREFIX)}
        if candidate.is_dir():
            wanted = ["u.data", "u.item", "u.user", "ml-100k.inter", "ml-100k.item",
                      "ml-100k.user"]
            found = {n: (candidate / n).read_bytes() for n in wanted if (candidate / n).exists()}
            if found:
                return found
    raise DataError(
        "MovieLens-100K not found: run `make setup` (downloads the RecBole wheel into "
        f"{cache_dir()}) or set data.path to a GroupLens ml-100k folder"
        + (f" (looked at {path})" if path else ""))


def _installed_recbole():
    try:
        import importlib.util
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def _parse_recbole(files: Dict[str, bytes]):
    def read(name):
        frame = pd.read_csv(io.BytesIO(files[name]), sep="\t", dtype=str,
                            keep_default_na=False)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame
    inter = read("ml-100k.inter")
    items = read("ml-100k.item")
    users = read("ml-100k.user")
    inter = pd.DataFrame({
        "user_id": inter["user_id"], "item_id": inter["item_id"],
        "rating": inter["rating"].astype(float),
        "timestamp": inter["timestamp"].astype(float).astype("int64")})
    items = pd.DataFrame({
        "item_id": items["item_id"],
        "title": items["movie_title"],
        "year": pd.to_numeric(items["release_year"], errors="coerce"),
        # RecBole keeps genres as space-separated tokens; multi-word genres have none.
        "genres": items["class"].str.split().str.join(MULTI_VALUE_SEPARATOR)})
    return inter, items, _users(users)


def _parse_grouplens(files: Dict[str, bytes]):
    inter = pd.read_csv(io.BytesIO(files["u.data"]), sep="\t", header=None,
                        names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    inter["rating"] = inter["rating"].astype(float)
    inter["timestamp"] = inter["timestamp"].astype("int64")
    raw = pd.read_csv(io.BytesIO(files["u.item"]), sep="|", header=None, encoding="latin-1",
                      dtype=str, keep_default_na=False)
    flags = raw.iloc[:, 5:5 + len(GROUPLENS_GENRES)].astype(int).to_numpy()
    genres = [MULTI_VALUE_SEPARATOR.join(g for g, f in zip(GROUPLENS_GENRES, row) if f)
              for row in flags]
    title = raw[1].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    items = pd.DataFrame({
        "item_id": raw[0], "title": title, "genres": genres,
        "year": pd.to_datetime(raw[2], errors="coerce", format="%d-%b-%Y").dt.year})
    users = pd.read_csv(io.BytesIO(files["u.user"]), sep="|", header=None, dtype=str,
                        names=["user_id", "age", "gender", "occupation", "zip_code"])
    return inter, items, _users(users)


def _users(users: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": users["user_id"].astype(str),
        "age": pd.to_numeric(users["age"], errors="coerce"),
        "gender": users["gender"], "occupation": users["occupation"]})


def profile_text(age, gender, occupation) -> str:
    words = []
    if age == age and age is not None:
        words.append(f"a {int(age)} year old {GENDER_WORDS.get(gender, 'person')}")
    else:
        words.append(f"a {GENDER_WORDS.get(gender, 'person')}")
    if occupation and occupation not in ("none", "other"):
        words.append(str(occupation))
    return ", ".join(words)


def time_text(timestamps: pd.Series) -> pd.Series:
    """Unix seconds -> 'Saturday evening' (UTC)."""
    when = pd.to_datetime(timestamps, unit="s", utc=True)
    hour = when.dt.hour.to_numpy()
    part = np.select([hour < 5, hour < 12, hour < 17, hour < 22],
                     ["night", "morning", "afternoon", "evening"], "night")
    return when.dt.day_name() + " " + part


def context_texts(frame: pd.DataFrame) -> pd.Series:
    profiles = {key: profile_text(*key) for key in
                set(zip(frame["age"], frame["gender"], frame["occupation"]))}
    profile = [profiles[k] for k in zip(frame["age"], frame["gender"], frame["occupation"])]
    return pd.Series(profile, index=frame.index) + ", " + time_text(frame["timestamp"])
