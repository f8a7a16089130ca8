"""Frames -> model features: training examples, evaluation queries, the catalogue.

Text columns are kept as strings here; `TextInputs` turns them into what the towers read:
cached sentence embeddings (frozen encoder) or token ids (fine-tuning), in tf.data, where
the towers' lookups also run (`tf_dataset`), so that the model itself sees only numbers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pandas as pd

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
import tensorflow as tf

from towerrec.pipelines.data import Dataset

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

    def __len__(self):
        return len(self.user_id)


def pad_history(sequences: List[List[str]], length: int) -> np.ndarray:
    out = np.full([len(sequences), length], "", dtype=object)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if seq:
            out[row, length - len(seq):] = seq
    return out


def training_examples(train: pd.DataFrame, history_length: int) -> Dict[str, np.ndarray]:
    """One example per training interaction; the history is what the user did before."""
    train = train.sort_values(["user_id", "timestamp"], kind="stable")
    histories = []
    for _, items in train.groupby("user_id", sort=False)["item_id"]:
        items = items.tolist()
        histories += [items[max(0, i - history_length):i] for i in range(len(items))]
    counts = train["item_id"].value_counts()
    return {
        "user_id": train["user_id"].to_numpy(dtype=object),
        "history": pad_history(histories, history_length),
        "context_text": train["context_text"].to_numpy(dtype=object),
        "item_id": train["item_id"].to_numpy(dtype=object),
        "item_probability": (train["item_id"].map(counts) / len(train)).to_numpy(np.float32),
    }


def evaluation_queries(split: pd.DataFrame, train: pd.DataFrame, catalogue_ids: np.ndarray,
                       history_length: int, known_users: bool) -> Queries:
    """Per user of `split`: history = their last training items, context = the context of
    their first test interaction; targets = their test items. With known_users False (the
    cold-user split) the query carries no user id and no history: context text only."""
    row_of = {item: row for row, item in enumerate(catalogue_ids)}
    train_items = train.sort_values("timestamp", kind="stable").groupby("user_id")["item_id"]
    train_items = {user: items.tolist() for user, items in train_items}
    split = split.sort_values(["user_id", "timestamp"], kind="stable")
    users, histories, contexts, targets, exclude = [], [], [], [], []
    for user, rows in split.groupby("user_id", sort=True):
        seen = train_items.get(user, []) if known_users else []
        users.append(user if known_users else NO_USER)
        histories.append(seen)
        contexts.append(rows["context_text"].iloc[0])
        targets.append(np.unique([row_of[i] for i in rows["item_id"]]))
        exclude.append(np.unique([row_of[i] for i in seen]).astype(np.int64))
    return Queries(np.array(users, dtype=object), pad_history(histories, history_length),
                   np.array(contexts, dtype=object), targets, exclude)


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


def _indexed(texts: np.ndarray):
    unique, index = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    return unique, index.astype(np.int32)


def tf_dataset(features: Dict[str, np.ndarray], text_inputs: TextInputs, batch_size: int,
               preprocess: Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]],
               shuffle_seed: int = None, drop_remainder: bool = False) -> tf.data.Dataset:
    """Examples -> batched tf.data of what a model reads: text is looked up per batch from
    per-text tables, then `preprocess` (a tower's or the model's) turns the remaining
    strings into numbers, here on the host: no string reaches the model."""
    tensors, tables = {}, {}
    for name, values in features.items():
        if name in TEXT_INPUTS:
            unique, index = _indexed(values)
            tables[name] = text_inputs.table(unique)
            tensors[name + "_index"] = index
        elif np.asarray(values).dtype == object:
            tensors[name] = np.asarray(values).astype(str)
        else:
            tensors[name] = values
    tables = {k: tf.nest.map_structure(tf.constant, v) for k, v in tables.items()}

    def model_inputs(batch):
        for name, table in tables.items():
            index = batch.pop(name + "_index")
            batch[TEXT_INPUTS[name]] = tf.nest.map_structure(
                lambda t: tf.gather(t, index), table)
        return preprocess(batch)

    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(next(iter(features.values()))), seed=shuffle_seed,
                        reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).map(
        model_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
