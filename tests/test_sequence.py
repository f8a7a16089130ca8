"""The order-aware history encoder: causal, blind to padding, the same under XLA and after
a SavedModel round trip."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.sequence import CausalHistoryEncoder, attention_mask, last_position

import numpy as np
import pytest
import tensorflow as tf

LENGTH, DIM = 6, 10


def _encoder() -> CausalHistoryEncoder:
    tf.keras.utils.set_random_seed(0)
    return CausalHistoryEncoder(LENGTH, width=8, heads=2, blocks=2, dropout=0.1)


def _inputs(filled: int = LENGTH, seed: int = 1):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=[2, LENGTH, DIM]).astype(np.float32)
    present = np.zeros([2, LENGTH], np.float32)
    present[:, LENGTH - filled:] = 1.0  # padding on the left, most recent last
    return items, present


def test_mask_reads_earlier_items_and_itself_only():
    present = tf.constant([[0.0, 1.0, 1.0]])
    expected = [[True, False, False],   # padding reads only itself
                [False, True, False],
                [False, True, True]]
    np.testing.assert_array_equal(attention_mask(present).numpy()[0], expected)


@pytest.mark.parametrize("changed", range(LENGTH))
def test_a_later_item_does_not_change_an_earlier_position(changed):
    encoder = _encoder()
    items, present = _inputs()
    before = encoder(items, present).numpy()
    items[:, changed] += 1.0
    after = encoder(items, present).numpy()
    np.testing.assert_array_equal(after[:, :changed], before[:, :changed])
    assert np.abs(after[:, changed:] - before[:, changed:]).min(axis=-1).max() > 1e-4


def test_padding_does_not_change_the_items_outputs():
    encoder = _encoder()
    items, present = _inputs(filled=3)
    before = encoder(items, present).numpy()
    items[:, :3] = 100.0  # whatever the padding rows hold
    after = encoder(items, present).numpy()
    np.testing.assert_allclose(after, before, atol=1e-6)
    np.testing.assert_array_equal(after[:, :3], 0.0)


def test_last_position_is_the_most_recent_item_or_zeros_without_history():
    encoder = _encoder()
    items, present = _inputs(filled=2)
    present[1] = 0.0
    sequence = encoder(items, present)
    last = last_position(sequence, tf.constant(present)).numpy()
    np.testing.assert_array_equal(last[0], sequence.numpy()[0, -1])
    np.testing.assert_array_equal(last[1], 0.0)


def test_training_mode_is_random_and_inference_is_not():
    encoder = _encoder()
    items, present = _inputs()
    np.testing.assert_array_equal(encoder(items, present), encoder(items, present))
    assert not np.allclose(encoder(items, present, training=True),
                           encoder(items, present, training=True))


def test_xla_compiles_to_the_same_outputs():
    encoder = _encoder()
    items, present = _inputs(filled=4)
    eager = encoder(items, present).numpy()
    compiled = tf.function(lambda i, p: encoder(i, p), jit_compile=True)
    np.testing.assert_allclose(compiled(items, present).numpy(), eager, atol=1e-5)


def test_saved_model_reloads_to_the_same_outputs(tmp_path):
    encoder = _encoder()
    items, present = _inputs(filled=4)
    expected = encoder(items, present).numpy()
    module = tf.Module()
    module.encoder = encoder
    module.serve = tf.function(
        lambda i, p: encoder(i, p),
        input_signature=[tf.TensorSpec([None, LENGTH, DIM], tf.float32),
                         tf.TensorSpec([None, LENGTH], tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    reloaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(reloaded.serve(items, present).numpy(), expected, atol=1e-6)


def test_a_saved_model_keeps_the_towers_it_was_trained_with(tmp_path, pipeline_log):
    import json

    from towerrec.config import load_config, to_dict
    from towerrec.training.run import trained_towers
    config = load_config(None)
    assert config.towers.history_encoder == "attention"
    saved = to_dict(config)
    del saved["towers"]["history_encoder"]  # a model saved before the setting existed
    saved["towers"]["history_length"] = 7
    (tmp_path / "config.json").write_text(json.dumps(saved))
    towers = trained_towers(config, tmp_path).towers
    assert (towers.history_encoder, towers.history_length) == ("mean", 7)
    assert "history_encoder=mean" in pipeline_log.text
    assert trained_towers(config, tmp_path / "missing") is config


def test_self_attention_by_matmuls_is_the_layers_own():
    from towerrec.towers.sequence import self_attention

    tf.keras.utils.set_random_seed(3)
    layer = tf.keras.layers.MultiHeadAttention(2, 4, dropout=0.1)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=[3, LENGTH, 8]), tf.float32)
    present = np.ones([3, LENGTH], np.float32)
    present[1, :2] = 0.0
    mask = attention_mask(tf.constant(present))
    ours = self_attention(layer, x, mask).numpy()  # builds the layer on first use
    np.testing.assert_allclose(ours, layer(x, x, attention_mask=mask).numpy(), atol=1e-5)


def test_a_history_with_gaps_reads_as_the_packed_one():
    from towerrec.towers.sequence import pack_right

    encoder = _encoder()
    items, present = _inputs(filled=3)  # row: 3 padding, then items a, b, c
    gapped_items, gapped_present = items.copy(), present.copy()
    # Row 0 as [a, pad, b, pad, c, pad]: an unknown item after c, another between.
    gapped_items[0] = items[0][[3, 0, 4, 1, 5, 2]]
    gapped_present[0] = [1, 0, 1, 0, 1, 0]
    packed_items, packed_present = pack_right(tf.constant(gapped_items),
                                              tf.constant(gapped_present))
    np.testing.assert_array_equal(packed_present.numpy()[0], present[0])
    np.testing.assert_array_equal(packed_items.numpy()[0, 3:], items[0, 3:])
    unchanged_items, unchanged_present = pack_right(tf.constant(items), tf.constant(present))
    np.testing.assert_array_equal(unchanged_items.numpy(), items)
    np.testing.assert_array_equal(unchanged_present.numpy(), present)
    expected = last_position(encoder(items, present), tf.constant(present)).numpy()
    got = last_position(encoder(packed_items, packed_present), packed_present).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
