"""The Keras 3 / Keras 2 boundary: reusable SavedModels used through hub.KerasLayer."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.text_encoder import TextEncoder, export_text_encoder
from towerrec.training.train import train

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from tests.conftest import slice_config

TEXTS = ["Toy Story (1995). Animation, Children's, Comedy",
         "a 25 year old woman, programmer, Saturday evening", "Heat"]


def _encoder_weights(encoder_dir):
    loaded = tf.saved_model.load(str(encoder_dir / "encoder"))
    return [v.numpy() for v in loaded.trainable_variables]


def _fit_through_layer(encoder_dir, trainable: bool):
    """Two steps of a tf_keras regression on top of the encoder layer."""
    preprocessor = tf.saved_model.load(str(encoder_dir / "preprocessor"))
    tokens = {k: v.numpy() for k, v in preprocessor(tf.constant(TEXTS)).items()}
    layer = hub.KerasLayer(str(encoder_dir / "encoder"), trainable=trainable)
    inputs = {k: tf.keras.Input([None], dtype=tf.int32, name=k) for k in tokens}
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(layer(inputs)))
    model.compile(tf.keras.optimizers.Adam(1e-2), "mse")
    before = [v.numpy().copy() for v in layer.weights]
    model.fit(tokens, np.array([[1.0], [-1.0], [0.5]]), epochs=2, verbose=0)
    changed = [not np.array_equal(a, v.numpy()) for a, v in zip(before, layer.weights)]
    return layer, changed


def test_fine_tuning_through_the_boundary_changes_encoder_weights(tiny_encoder_dir):
    layer, changed = _fit_through_layer(tiny_encoder_dir, trainable=True)
    assert len(layer.trainable_weights) > 10
    assert sum(changed) >= len(layer.trainable_weights) // 2


def test_frozen_encoder_weights_do_not_change(tiny_encoder_dir):
    layer, changed = _fit_through_layer(tiny_encoder_dir, trainable=False)
    assert layer.trainable_weights == []
    assert not any(changed)


@pytest.mark.large
def test_frozen_training_leaves_encoder_and_cache_consistent(
        tiny_encoder_dir, movielens_slice, tmp_path):
    before = _encoder_weights(tiny_encoder_dir)
    config = slice_config(movielens_slice, tmp_path, **{"training.epochs": 1})
    run = train(config, encoder_dir=tiny_encoder_dir, verbose=0)
    after = _encoder_weights(tiny_encoder_dir)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    cached = run.text_inputs.embed(TEXTS[:1])
    fresh = TextEncoder(tiny_encoder_dir)._encode_batch(tf.constant(TEXTS[:1])).numpy()
    np.testing.assert_allclose(cached, fresh, atol=1e-5)


@pytest.mark.large
def test_fine_tune_option_trains_the_encoder_inside_the_towers(
        tiny_encoder_dir, movielens_slice, tmp_path):
    before = _encoder_weights(tiny_encoder_dir)
    config = slice_config(movielens_slice, tmp_path, **{
        "training.epochs": 1, "encoder.fine_tune": True, "training.batch_size": 256,
        "split.warm_test_fraction": 0.5})
    run = train(config, encoder_dir=tiny_encoder_dir, verbose=0)
    encoder = run.model.query_tower.context.encoder
    assert encoder is run.model.candidate_tower.text.encoder  # one encoder, shared
    after = [v.numpy() for v in encoder.trainable_weights]
    assert len(after) == len(before)
    changed = sum(not np.allclose(a, b) for a, b in zip(before, after))
    assert changed >= len(before) // 2


def test_padding_does_not_change_embeddings(tiny_encoder_dir):
    """TextEncoder trims batches to their longest text; that must not change results."""
    encoder = TextEncoder(tiny_encoder_dir)
    tokens = encoder.preprocessor(tf.constant(TEXTS))
    full = encoder.encoder(tokens, training=False).numpy()
    trimmed = encoder._encode_batch(tf.constant(TEXTS)).numpy()
    np.testing.assert_allclose(full, trimmed, atol=1e-5)


@pytest.mark.large
def test_real_minilm_checkpoint(minilm_dir):
    """The bundled all-MiniLM-L6-v2: exported, reloaded, equal to keras-hub in process."""
    from towerrec.towers.text_encoder import resolve_preset

    import keras_hub

    encoder = TextEncoder(minilm_dir)
    assert encoder.dim == 384
    texts = ["A boy and his toys come to life.", "Toys that come alive and play with a kid.",
             "Quarterly tax filing deadline for corporations."]
    vectors = encoder.encode(texts, progress=False)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5 and unrelated < 0.2, (similar, unrelated)

    path = resolve_preset("bundled-minilm")
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    preprocessor = keras_hub.models.BertTextEmbedderPreprocessor.from_preset(
        path, sequence_length=32)
    tokens = preprocessor(tf.constant(texts))
    sequence = backbone(tokens)["sequence_output"].numpy()
    mask = tokens["padding_mask"].numpy()[:, :, None].astype(np.float32)
    pooled = (sequence * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, pooled, atol=1e-4)


def test_unknown_preset_is_a_clear_error(tmp_path):
    from towerrec.towers.text_encoder import EncoderError
    with pytest.raises(EncoderError, match="cannot load BERT preset 'no/such/preset'"):
        export_text_encoder(tmp_path / "x", "no/such/preset")
