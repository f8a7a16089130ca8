"""Small feature layers shared by the towers (tf_keras, for TFRS)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.data.dataset import MULTI_VALUE_SEPARATOR

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

MASK_INDEX = 0  # "" (padding) looks up to 0
OOV_INDEX = 1   # an id the vocabulary has not seen looks up to 1
NO_ROW = -1     # a catalogue row for history padding, or an item the catalogue does not know
# Catalogue text tables (a sentence embedding per item, read by the query tower's history
# and the ranker) are stored in 16 bits: at a million items that is 0.77 GB instead of 1.5
# per copy, and every served model that reads history holds one. Gathered rows are cast to
# float32; the same rounded values are used in training, evaluation and serving.
TEXT_TABLE_DTYPE = tf.float16
# A lookup's vocabulary: its entries, or the path of a file with one entry per line.
Vocabulary = Union[Sequence[str], str, Path]


def string_lookup(vocabulary: Vocabulary) -> tf.keras.layers.StringLookup:
    """"" -> 0 (padding), unknown -> 1, vocabulary[i] -> i + 2.

    `vocabulary` is a list, or the path of a file with one entry per line: a file's table is
    initialized from it, and an exported SavedModel carries the file as an asset instead of
    a graph constant (a million ids would otherwise sit in saved_model.pb)."""
    if isinstance(vocabulary, (str, Path)):
        vocabulary = os.fspath(vocabulary)
    else:
        vocabulary = list(vocabulary)
    return tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token="", num_oov_indices=1)


def write_vocabulary(values: Sequence[str], directory: Path, name: str) -> Path:
    """One entry per line (the format `string_lookup` reads) in directory/name-<hash>.txt,
    written atomically. Named by content: a lookup reads its file when it is built, an
    export copies it when it is saved, and a file of that name never changes between."""
    text = "".join(f"{v}\n" for v in values)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    path = Path(directory) / f"{name}-{digest}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def host_variable(values, dtype=None) -> tf.Variable:
    """A non-trainable variable on the host CPU: a catalogue-sized table that tf.data and
    the exported graphs read (a variable, so that it is saved in variables/ and never as a
    graph constant; on the CPU, where tf.data runs)."""
    with tf.init_scope(), tf.device("/cpu:0"):
        return tf.Variable(values, trainable=False, dtype=dtype)


def drop_to_oov(indices: tf.Tensor, rate: float, training) -> tf.Tensor:
    """Training only: replaces each index by OOV_INDEX with probability `rate`."""
    if not training or rate <= 0:
        return indices
    keep = tf.random.uniform(tf.shape(indices)) >= rate
    return tf.where(keep, indices, tf.cast(OOV_INDEX, indices.dtype))


class MultiHot(tf.keras.layers.Layer):
    """"a|b" strings [batch] -> multi-hot float32 [batch, len(vocabulary) + 1] (column 0:
    unknown). String ops: for the input pipeline and serving graphs, not a tower's call."""

    def __init__(self, vocabulary: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.vocabulary = list(vocabulary)
        self.lookup = string_lookup(self.vocabulary)

    def call(self, values):
        parts = tf.strings.split(tf.reshape(values, [-1]), MULTI_VALUE_SEPARATOR)
        indices = self.lookup(parts).to_tensor(default_value=MASK_INDEX)
        hot = tf.reduce_max(tf.one_hot(indices, len(self.vocabulary) + 2), axis=1)
        return hot[:, 1:]  # drop the padding column; OOV_INDEX becomes column 0

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary}


class Standardize(tf.keras.layers.Layer):
    """Numeric [batch] -> [batch, 2]: (x - mean) / std, and 1 where x is missing (NaN)."""

    def __init__(self, mean: float, std: float, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std) or 1.0

    def call(self, values):
        values = tf.cast(tf.reshape(values, [-1]), tf.float32)
        missing = tf.math.is_nan(values)
        scaled = tf.where(missing, 0.0, (values - self.mean) / self.std)
        return tf.stack([scaled, tf.cast(missing, tf.float32)], axis=1)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


class TextVector(tf.keras.layers.Layer):
    """A text feature as a vector [batch, hidden].

    Frozen encoder: the input already is the cached sentence embedding. Fine-tuning: the
    input is the preprocessor's token dict and the shared `encoder` (a hub.KerasLayer over
    the reusable SavedModel) runs here, in the training step.
    """

    def __init__(self, encoder: Optional[hub.KerasLayer] = None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, inputs, training=False):
        if self.encoder is None:
            return tf.cast(inputs, tf.float32)
        return self.encoder(inputs, training=training)


def mlp(hidden_dim: int, output_dim: int, dropout: float, name: str,
        dtype: Optional[str] = None) -> tf.keras.Sequential:
    """Dense(hidden, relu) -> Dropout -> Dense(output); the towers' shared head shape.

    `dtype`: a Keras dtype policy such as "mixed_bfloat16" (float32 weights, 16-bit
    compute and output); None: float32."""
    return tf.keras.Sequential([
        tf.keras.layers.Dense(hidden_dim, activation="relu", dtype=dtype),
        tf.keras.layers.Dropout(dropout, dtype=dtype),
        tf.keras.layers.Dense(output_dim, dtype=dtype),
    ], name=name)


def unit_rows(x: tf.Tensor) -> tf.Tensor:
    """[batch, d] -> float32 [batch, d], each row of length 1. Normalized in float32,
    whatever precision the head computed in: scores and the loss stay float32."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=1)


def numeric_stats(values: np.ndarray):
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return 0.0, 1.0
    return float(values.mean()), float(values.std() or 1.0)


def weighted_mean(weights, values):
    """weights [b, h], values [b, h, d] -> [b, d]. A multiply and a sum: tf.einsum costs
    a contraction's set-up (about 0.1-0.3 ms a call on CPU) for these few numbers."""
    return tf.reduce_sum(weights[:, :, None] * tf.cast(values, weights.dtype), axis=1)
