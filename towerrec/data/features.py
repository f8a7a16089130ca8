"""Frames -> model features: training examples, evaluation queries, the catalogue.

Text columns are kept as strings here; `TextInputs` turns them into what the towers read:
cached sentence embeddings (frozen encoder) or token ids (fine-tuning), in tf.data, where
the towers' lookups also run (`tf_dataset`), so that the model itself sees only numbers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Union

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.data.dataset import Dataset
from towerrec.towers.features import NO_ROW, host_variable

import numpy as np
import pandas as pd
import tensorflow as tf

NO_USER = ""  # the user id of a query from someone the model has never seen
# Text columns of the examples -> the tower inputs that read them.
TEXT_INPUTS = {"context_text": "context", "item_text": "item_text"}


@dataclasses.dataclass
class Queries:
    """One retrieval query per user of a split, with what counts as a hit."""
    user_id: np.ndarray          # [n] str ("" for cold users)
    history: np.ndarray          # [n, history_length] str, "" padded, most recent last
    context_text: np.ndarray     # [n] str
    targets: List[np.ndarray]    # catalogue row indices the user interacted with
    exclude: List[np.ndarray]    # catalogue row indices seen in training (not ranked)
    # [n] seconds: when the query is asked (its first held-out interaction), what the item
    # prior may look at; None: after every training interaction (as at serving).
    time: Optional[np.ndarray] = None

    def __len__(self):
        return len(self.user_id)


@dataclasses.dataclass
class Indexed:
    """A column stored once per distinct value: `values` [m, ...] and, per example, the
    row of its value, `index` [n] int. A million interactions of ten thousand items hold
    each item's features once, not once per interaction."""
    values: np.ndarray
    index: np.ndarray

    def __len__(self):
        return len(self.index)


# name -> an array [n, ...] or an `Indexed` column: examples as `tf_dataset` reads them.
Features = Dict[str, Union[np.ndarray, Indexed]]


def pad_history(sequences: List[List[str]], length: int) -> np.ndarray:
    out = np.full([len(sequences), length], "", dtype=object)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if seq:
            out[row, length - len(seq):] = seq
    return out


def catalogue_rows(catalogue_ids: np.ndarray, item_ids) -> np.ndarray:
    """Item ids (any shape; "" or unknown allowed) -> catalogue rows int64, NO_ROW where
    the catalogue does not know the id."""
    item_ids = np.asarray(item_ids, dtype=object)
    rows = pd.Index(catalogue_ids).get_indexer(item_ids.ravel())
    return np.where(rows >= 0, rows, NO_ROW).astype(np.int64).reshape(item_ids.shape)


def history_windows(rows: np.ndarray, user_start: np.ndarray, length: int,
                    chunk: int = 1 << 20) -> np.ndarray:
    """Per example i of a user's time-ordered interactions (rows [n], the user's first
    example user_start [n]): the `length` rows before it, most recent last, NO_ROW padded
    on the left -> int32 [n, length]. Built in chunks: never an [n, length] int64."""
    out = np.empty([len(rows), length], np.int32)
    offsets = np.arange(-length, 0)
    for begin in range(0, len(rows), chunk):
        end = min(begin + chunk, len(rows))
        before = np.arange(begin, end)[:, None] + offsets[None, :]
        valid = before >= user_start[begin:end, None]
        out[begin:end] = np.where(valid, rows[np.maximum(before, 0)], NO_ROW)
    return out


def training_examples(train: pd.DataFrame, catalogue_ids: np.ndarray,
                      history_length: int) -> Features:
    """One example per training interaction; the history is what the user did before.

    {"user_id": Indexed, "history_rows": int32 [n, history_length] (NO_ROW padded),
     "context_text": Indexed, "item_row": int32 [n] (catalogue rows),
     "item_probability": float32 [n] (the item's share of training interactions)}.
    Numbers only per interaction: strings are held once per distinct value."""
    train = train.sort_values(["user_id", "timestamp"], kind="stable")
    rows = catalogue_rows(catalogue_ids, train["item_id"].to_numpy()).astype(np.int32)
    user_codes, users = pd.factorize(train["user_id"], sort=False)
    first = np.r_[True, user_codes[1:] != user_codes[:-1]] if len(rows) else np.zeros(0, bool)
    user_start = np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    context_codes, contexts = pd.factorize(train["context_text"], sort=False)
    counts = np.bincount(rows, minlength=len(catalogue_ids))
    return {
        "user_id": Indexed(np.asarray(users, dtype=object), user_codes.astype(np.int32)),
        "history_rows": history_windows(rows, user_start, history_length),
        "context_text": Indexed(np.asarray(contexts, dtype=object),
                                context_codes.astype(np.int32)),
        "item_row": rows,
        "item_probability": (counts[rows] / max(len(rows), 1)).astype(np.float32),
    }


def sample_users(frame: pd.DataFrame, limit: Optional[int], seed: int) -> pd.DataFrame:
    """The interactions of every user of `frame`, or of a seeded uniform sample of `limit`
    users (None: all)."""
    users = np.sort(frame["user_id"].unique())
    if limit is None or len(users) <= limit:
        return frame
    chosen = np.random.default_rng(seed).choice(users, limit, replace=False)
    return frame[frame["user_id"].isin(chosen)]


def evaluation_queries(split: pd.DataFrame, train: pd.DataFrame, catalogue_ids: np.ndarray,
                       history_length: int, known_users: bool) -> Queries:
    """Per user of `split`: history = their last training items, context = the context of
    their first test interaction; targets = their test items. With known_users False (the
    cold-user split) the query carries no user id and no history: context text only."""
    split = split.sort_values(["user_id", "timestamp"], kind="stable")
    split_rows = catalogue_rows(catalogue_ids, split["item_id"].to_numpy())
    users, starts = np.unique(split["user_id"].to_numpy(dtype=object), return_index=True)
    contexts = split["context_text"].to_numpy(dtype=object)[starts]
    times = split["timestamp"].to_numpy(np.float64)[starts]
    targets = ([np.unique(part) for part in np.split(split_rows, starts[1:])]
               if len(starts) else [])
    if known_users:
        # Only the split's users' training interactions: a sample of users costs its own.
        seen = train[train["user_id"].isin(users)].sort_values(["user_id", "timestamp"],
                                                                kind="stable")
        seen_users = seen["user_id"].to_numpy(dtype=object)
        seen_ids = seen["item_id"].to_numpy(dtype=object)
        begin = np.searchsorted(seen_users, users, side="left")
        end = np.searchsorted(seen_users, users, side="right")
        histories = [list(seen_ids[b:e]) for b, e in zip(begin, end)]
        seen_rows = catalogue_rows(catalogue_ids, seen_ids)
        exclude = [np.unique(seen_rows[b:e]) for b, e in zip(begin, end)]
    else:
        users = np.full(len(users), NO_USER, dtype=object)
        histories = [[] for _ in range(len(users))]
        exclude = [np.zeros(0, np.int64) for _ in range(len(users))]
    return Queries(np.asarray(users, dtype=object), pad_history(histories, history_length),
                   np.asarray(contexts, dtype=object), targets, exclude, times)


def catalogue_features(dataset: Dataset) -> Dict[str, np.ndarray]:
    """Raw candidate features of every item, in catalogue order (item_text is a string)."""
    items = dataset.items
    features = {"item_id": items["item_id"].to_numpy(dtype=object),
                "item_text": items["text"].to_numpy(dtype=object)}
    for name in dataset.categorical_columns:
        features[name] = items[name].to_numpy(dtype=object)
    for name in dataset.numeric_columns:
        features[name] = items[name].to_numpy(np.float32)
    return features


class TextInputs:
    """Strings -> what a tower's text input reads, for a frozen or a fine-tuned encoder."""

    def __init__(self, encoder_dir: Path, fine_tune: bool, batch_size: int = 128):
        from towerrec.towers.text_encoder import TextEncoder

        self.fine_tune = fine_tune
        self.encoder = TextEncoder(encoder_dir, batch_size=batch_size)

    def table(self, texts: np.ndarray):
        """Unique texts -> a table the examples index: embeddings, or token ids."""
        if self.fine_tune:
            tokens = self.encoder.preprocessor(tf.constant(list(texts), tf.string))
            return {k: v.numpy() for k, v in tokens.items()}
        return self.encoder.encode(texts)

    def embed(self, texts) -> np.ndarray:
        """Frozen sentence embeddings (cached), whatever the mode."""
        return self.encoder.encode(texts)


def _distinct(values: np.ndarray) -> Indexed:
    """Strings -> each distinct value once, and the row of each (no fixed-width copy)."""
    index, distinct = pd.factorize(pd.Series(np.asarray(values, dtype=object)), sort=False)
    return Indexed(np.asarray(distinct, dtype=object), index.astype(np.int32))


def utf8(values) -> np.ndarray:
    """Strings (any shape) -> a bytes array, UTF-8, as string tensors want them."""
    values = np.asarray(values, dtype=object)
    return np.array([str(v).encode("utf-8") for v in values.ravel()],
                    dtype=object).reshape(values.shape)


def tf_dataset(features: Mapping[str, Union[np.ndarray, Indexed]], text_inputs: TextInputs,
               batch_size: int,
               preprocess: Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]],
               shuffle_seed: Optional[int] = None,
               drop_remainder: bool = False) -> tf.data.Dataset:
    """Examples -> batched tf.data of what a model reads.

    `features`: name -> an array [n, ...] or an `Indexed` column (string arrays become
    Indexed here). Every per-example array and every table sits in a host variable once;
    a batch is a gather of example ids from them: text columns from their per-text tables
    (embeddings, or token ids), then `preprocess` (a tower's or the model's) turns the
    remaining strings into numbers, on the host: no string reaches the model. Shuffling
    permutes the example ids (a new permutation each epoch), so memory stays that of the
    arrays themselves, whatever the number of examples."""
    columns, tables = {}, {}
    for name, values in features.items():
        if not isinstance(values, Indexed):
            if np.asarray(values).dtype != object:
                columns[name] = np.asarray(values)
                continue
            values = _distinct(values)
        table = values.values
        if name in TEXT_INPUTS:
            table = text_inputs.table(table)
        elif np.asarray(table).dtype == object:
            table = utf8(table)
        tables[name] = tf.nest.map_structure(host_variable, table)
        columns[name + "_index"] = values.index
    size = len(next(iter(columns.values())))
    columns = {name: host_variable(values) for name, values in columns.items()}

    def model_inputs(ids):
        batch = {name: tf.gather(values, ids) for name, values in columns.items()}
        for name, table in tables.items():
            index = batch.pop(name + "_index")
            batch[TEXT_INPUTS.get(name, name)] = tf.nest.map_structure(
                lambda t, index=index: tf.gather(t, index), table)
        return preprocess(batch)

    if shuffle_seed is None:
        ids = tf.data.Dataset.range(size)
    else:
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True)
        ids = seeds.take(1).flat_map(lambda seed: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(
                tf.range(size, dtype=tf.int64), seed=tf.stack([seed, 0]))))
    batches = size // batch_size if drop_remainder else -(-size // batch_size)
    # The shuffle's flat_map hides the count: stated, Keras shows each epoch's length from
    # the first, and an epoch resumed from a backup is not counted from the step restored.
    return ids.batch(batch_size, drop_remainder=drop_remainder).apply(
        tf.data.experimental.assert_cardinality(batches)).map(
        model_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
