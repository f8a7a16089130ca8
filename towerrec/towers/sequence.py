"""An order-aware history encoder: causal self-attention over the items a user had
(SASRec, Kang & McAuley 2018), for the query tower."""
from __future__ import annotations

import math

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)

import tensorflow as tf


class CausalHistoryEncoder(tf.keras.layers.Layer):
    """History item vectors -> one vector per position, each reading only its own item and
    the items before it.

    Inputs:
      items: float32 [batch, length, d], a vector per history item, most recent last
        (padding on the left, as the query tower's history is built).
      present: float32 [batch, length], 1 for an item, 0 for padding.
    Output: float32 [batch, length, width]; position i depends on positions <= i only.

    A learned position embedding marks each item's recency (position length - 1 is the
    most recent item of every history, whatever its length). Static shapes, no Python
    control flow on values: it compiles with XLA and exports as it is.
    """

    def __init__(self, length: int, width: int = 64, heads: int = 2, blocks: int = 2,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.length, self.width, self.heads, self.blocks = length, width, heads, blocks
        self.dropout_rate = dropout
        self.project = tf.keras.layers.Dense(width, name="project")
        self.position = tf.keras.layers.Embedding(length, width, name="position")
        self.input_norm = tf.keras.layers.LayerNormalization(name="input_norm")
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.attention, self.attention_norm, self.feed_forward, self.output_norm = [], [], [], []
        for b in range(blocks):
            self.attention.append(tf.keras.layers.MultiHeadAttention(
                heads, width // heads, dropout=dropout, name=f"attention_{b}"))
            self.attention_norm.append(tf.keras.layers.LayerNormalization(
                name=f"attention_norm_{b}"))
            self.feed_forward.append(tf.keras.Sequential([
                tf.keras.layers.Dense(2 * width, activation="relu"),
                tf.keras.layers.Dropout(dropout),
                tf.keras.layers.Dense(width)], name=f"feed_forward_{b}"))
            self.output_norm.append(tf.keras.layers.LayerNormalization(
                name=f"output_norm_{b}"))

    def call(self, items, present, training=False):
        x = self.project(items) + self.position(tf.range(self.length))[None]
        x = self.dropout(self.input_norm(x), training=training)
        x *= present[:, :, None]
        mask = attention_mask(present)
        for attention, attention_norm, feed_forward, output_norm in zip(
                self.attention, self.attention_norm, self.feed_forward, self.output_norm):
            x = attention_norm(x + self_attention(attention, x, mask, training))
            x = output_norm(x + self.dropout(feed_forward(x, training=training),
                                             training=training))
            x *= present[:, :, None]
        return x

    def get_config(self):
        return {**super().get_config(), "length": self.length, "width": self.width,
                "heads": self.heads, "blocks": self.blocks, "dropout": self.dropout_rate}


def attention_mask(present: tf.Tensor) -> tf.Tensor:
    """present float32 [batch, length] -> bool [batch, length, length]: query position i
    may read key position j when j <= i and j holds an item; every position reads itself,
    so that a padding position's softmax is never over nothing (its output is zeroed)."""
    length = tf.shape(present)[1]
    causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    itself = tf.eye(length, dtype=tf.bool)
    keys = tf.cast(present, tf.bool)[:, None, :]
    return (causal[None] & keys) | itself[None]


def pack_right(items: tf.Tensor, present: tf.Tensor):
    """(items [batch, length, d], present float32 [batch, length]) -> the same with each
    row's items moved to the end, in their order, and padding before them: a history with
    gaps (an item a model does not know, e.g. one newer than its catalogue) reads as the
    packed history the encoder's positions assume, as served histories are packed. A
    history already packed is unchanged."""
    order = tf.argsort(present, axis=1, stable=True)  # padding (0) first, items in order
    return (tf.gather(items, order, axis=1, batch_dims=1),
            tf.gather(present, order, axis=1, batch_dims=1))


def last_position(sequence: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
    """[batch, length, width] -> [batch, width]: the most recent position's vector, zeros
    for an empty history."""
    return sequence[:, -1] * present[:, -1:]


def self_attention(layer: tf.keras.layers.MultiHeadAttention, x: tf.Tensor, mask: tf.Tensor,
                   training=False) -> tf.Tensor:
    """`layer(x, x, attention_mask=mask, training=training)` with matmuls: the same
    weights, math and outputs. The layer's einsums cost a contraction's set-up each (about
    0.1-0.3 ms a call on a CPU, a dozen of them per request) for these few numbers; as
    matmuls the served query tower is ~2 ms faster.

    x: float32 [batch, length, width]; mask: bool [batch, length, length].
    """
    if not layer.built:  # its first call creates its variables
        layer(x, x, attention_mask=mask)
    batch, length, width = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    _, heads, key_dim = layer._query_dense.kernel.shape  # [width, heads, key_dim]
    rows = tf.reshape(x, [-1, width])

    def project(dense):  # EinsumDense kernel [width, heads, key_dim] -> [b, heads, l, key_dim]
        y = tf.matmul(rows, tf.reshape(dense.kernel, [width, heads * key_dim]))
        y += tf.reshape(dense.bias, [heads * key_dim])
        return tf.transpose(tf.reshape(y, [batch, length, heads, key_dim]), [0, 2, 1, 3])

    query = project(layer._query_dense) * (1.0 / math.sqrt(float(key_dim)))
    scores = tf.matmul(query, project(layer._key_dense), transpose_b=True)
    scores = tf.where(mask[:, None], scores, tf.cast(-1e9, scores.dtype))
    weights = layer._dropout_layer(tf.nn.softmax(scores, axis=-1), training=training)
    context = tf.matmul(weights, project(layer._value_dense))  # [b, heads, l, key_dim]
    context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, heads * key_dim])
    output = layer._output_dense
    out = tf.matmul(context, tf.reshape(output.kernel, [heads * key_dim, width])) + output.bias
    return tf.reshape(out, [batch, length, width])
