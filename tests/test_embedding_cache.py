"""The frozen encoder's on-disk cache: chunked, memory-mapped, resumable after a kill."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.towers.embedding_cache import EmbeddingCache, text_keys
from towerrec.towers.text_encoder import TextEncoder

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
WORDS = ["toy", "story", "heat", "evening", "comedy", "woman", "drama"]


def _texts(n):
    """n distinct texts of 3 to 15 words."""
    return [f"{WORDS[i % 7]} item {i} " + " ".join(WORDS[:i % 13]) for i in range(n)]


def _fresh(encoder, texts):
    """texts [n] -> [n, hidden], encoded without the cache."""
    return np.concatenate([encoder._encode_batch(tf.constant(texts[i:i + 500])).numpy()
                           for i in range(0, len(texts), 500)])


def _count_encoded(encoder):
    """Replaces encoder._encode_batch by one that records the texts it is given."""
    seen = []
    original = encoder._encode_batch

    def counting(texts):
        seen.extend(texts.numpy().tolist())
        return original(texts)
    encoder._encode_batch = counting
    return seen


def _chunks(cache_dir: Path):
    return sorted(cache_dir.glob("chunk-*.keys.npy"))


@pytest.fixture
def encoder_dir(tiny_encoder_dir, tmp_path) -> Path:
    """A private copy of the tiny encoder, without the cache other tests wrote."""
    return Path(shutil.copytree(tiny_encoder_dir, tmp_path / "tiny",
                                ignore=shutil.ignore_patterns("embedding_cache*")))


def test_cached_vectors_equal_fresh_ones_in_order(encoder_dir, capsys):
    texts = _texts(40)
    asked = texts[5:] + texts[:5] + texts[3:8] + [texts[0]]  # with duplicates
    encoder = TextEncoder(encoder_dir, batch_size=16, chunk_size=20)
    encoded = _count_encoded(encoder)
    vectors = encoder.encode(asked)
    assert vectors.dtype == np.float32 and vectors.shape == (len(asked), encoder.dim)
    assert len(encoded) == 40  # each unique text once
    assert "text/s" in capsys.readouterr().err
    np.testing.assert_allclose(vectors, _fresh(encoder, asked), atol=1e-5)
    assert len(_chunks(encoder_dir / "embedding_cache")) == 2  # 20 texts, rounded to batches

    again = TextEncoder(encoder_dir)
    encoded = _count_encoded(again)
    np.testing.assert_array_equal(again.encode(asked, progress=True), vectors)
    assert encoded == []
    assert capsys.readouterr().err == ""  # no bar when nothing is encoded
    assert again.encode([]).shape == (0, encoder.dim)


@pytest.mark.large
def test_a_killed_encode_resumes_where_it_stopped(encoder_dir, tmp_path):
    texts = _texts(3000)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    # The child hangs in its 7th batch: 4 batches (200 texts) are flushed as a chunk, 2
    # more are encoded but not flushed when it is killed.
    script = f"""
import json, time
from towerrec.towers.text_encoder import TextEncoder
encoder = TextEncoder({str(encoder_dir)!r}, batch_size=50, chunk_size=200)
original, calls = encoder._encode_batch, []
def slow(texts):
    calls.append(1)
    if len(calls) == 7:
        time.sleep(600)
    return original(texts)
encoder._encode_batch = slow
encoder.encode(json.load(open({str(tmp_path / "texts.json")!r})), progress=False)
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cache_dir = encoder_dir / "embedding_cache"
    try:
        deadline = time.monotonic() + 240
        while not (cache_dir.exists() and _chunks(cache_dir)):
            if child.poll() is not None:
                pytest.fail(f"the child exited: {child.communicate()[1].decode()[-2000:]}")
            assert time.monotonic() < deadline, "no chunk after 240 s"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    flushed = sum(len(np.load(p)) for p in _chunks(cache_dir))
    assert flushed == 200

    encoder = TextEncoder(encoder_dir, batch_size=100)
    encoded = _count_encoded(encoder)
    vectors = encoder.encode(texts, progress=False)
    assert len(encoded) == 3000 - flushed
    np.testing.assert_allclose(vectors, _fresh(encoder, texts), atol=1e-5)


def test_the_old_npz_cache_is_imported(encoder_dir):
    texts = _texts(30)
    stored = np.random.default_rng(0).normal(size=[30, 32]).astype(np.float32)
    hex_keys = np.array([k.hex() for k in text_keys(texts).tolist()])
    np.savez(encoder_dir / "embedding_cache.npz", keys=hex_keys, values=stored)

    encoder = TextEncoder(encoder_dir, chunk_size=8)
    encoded = _count_encoded(encoder)
    np.testing.assert_array_equal(encoder.encode(texts[::-1]), stored[::-1])
    assert encoded == []
    assert not (encoder_dir / "embedding_cache.npz").exists()
    assert len(_chunks(encoder_dir / "embedding_cache")) == 4


def test_a_truncated_chunk_is_skipped_and_encoded_again(encoder_dir):
    texts = _texts(60)
    TextEncoder(encoder_dir, batch_size=20, chunk_size=20).encode(texts, progress=False)
    cache_dir = encoder_dir / "embedding_cache"
    keys = _chunks(cache_dir)
    assert len(keys) == 3
    damaged = str(keys[1]).replace(".keys.npy", ".vectors.npy")
    os.truncate(damaged, os.path.getsize(damaged) // 2)

    with pytest.warns(UserWarning, match="skipping chunk"):
        encoder = TextEncoder(encoder_dir)
    encoded = _count_encoded(encoder)
    vectors = encoder.encode(texts, progress=False)
    assert sorted(encoded) == sorted(t.encode() for t in
                                     np.array(texts)[np.isin(text_keys(texts),
                                                             np.load(keys[1]))])
    np.testing.assert_allclose(vectors, _fresh(encoder, texts), atol=1e-5)


def test_two_writers_share_one_cache(tmp_path):
    """Chunks of two cache objects (two processes) on one folder: both see all of them."""
    first, second = EmbeddingCache(tmp_path, 4), EmbeddingCache(tmp_path, 4)
    a, b = text_keys(["a", "b"]), text_keys(["b", "c"])
    first.put(a, np.ones([2, 4], np.float32))
    second.put(b, np.full([2, 4], 2, np.float32))  # "b" twice: either copy will do
    assert len(first) == len(second) == 3
    assert len(set(p.name for p in _chunks(tmp_path))) == 2
    (tmp_path / ".tmp-1-chunk-000009-1.keys.npy").write_bytes(b"half")  # a writer's temp
    out = np.zeros([3, 4], np.float32)
    keys = text_keys(["c", "a", "z"])
    third = EmbeddingCache(tmp_path, 4)
    found = third.read(*third.locate(keys), out)
    assert found.tolist() == [True, True, False]
    assert out[:, 0].tolist() == [2, 1, 0]


def test_ctrl_c_keeps_the_batches_already_encoded(encoder_dir):
    texts = _texts(50)
    encoder = TextEncoder(encoder_dir, batch_size=10, chunk_size=1000)
    original, calls = encoder._encode_batch, []

    def interrupted(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(batch)
    encoder._encode_batch = interrupted
    with pytest.raises(KeyboardInterrupt):
        encoder.encode(texts, progress=False)
    assert len(EmbeddingCache(encoder_dir / "embedding_cache", encoder.dim)) == 20
