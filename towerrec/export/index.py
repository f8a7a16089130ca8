"""`towerrec index`: the catalogue's candidate embeddings -> a ScaNN index (and brute force).

The ScaNN configuration follows the catalogue size, as ScaNN's own guidance has it: exact
(brute-force) scoring below ~20k items; above, partitioning into about sqrt(n) leaves,
anisotropic asymmetric hashing (2 dimensions per block, threshold 0.2) and exact
reordering of the best candidates.

The searcher is ScaNN's TensorFlow-ops one, the kind a SavedModel holds, so that the run's
index and the exported `retrieval_scann` / `recommender_scann` share one build
(`index_and_export`). Its state (`ScannState`'s
tensors) is stored in the index folder, numbers as .npy files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.evaluation.topk import DotScores, top_k_scores

import numpy as np
import tensorflow as tf

BRUTE_FORCE_BELOW = 20_000
INDEX_DIR = "index"


def scann_settings(num_items: int, k: int = 100,
                   leaves_to_search: Optional[int] = None) -> dict:
    """The ScaNN settings for a catalogue of `num_items` (a plain dict, saved with the index)."""
    if num_items < BRUTE_FORCE_BELOW:
        return {"mode": "brute_force", "k": k}
    leaves = int(round(math.sqrt(num_items)))
    return {"mode": "tree_ah", "k": k, "num_leaves": leaves,
            # ~5% of leaves searched gives recall@10 ~0.95 on trained-like embeddings;
            # benchmarks/index.py measures the trade-off.
            "num_leaves_to_search": leaves_to_search or max(1, leaves // 20),
            "training_sample_size": min(num_items, 250_000),
            "dimensions_per_block": 2, "anisotropic_quantization_threshold": 0.2,
            "reorder": max(100, 2 * k)}


def scann_builder(embeddings: np.ndarray, settings: dict, tensorflow_ops: bool = False):
    """A ScaNN builder (pybind, or TF ops for a SavedModel) with `settings` applied."""
    if tensorflow_ops:
        from scann.scann_ops.py import scann_ops as ops
    else:
        from scann.scann_ops.py import scann_ops_pybind as ops
    builder = ops.builder(np.ascontiguousarray(embeddings, np.float32), settings["k"],
                          "dot_product")
    if settings["mode"] == "brute_force":
        return builder.score_brute_force()
    return (builder
            .tree(num_leaves=settings["num_leaves"],
                  num_leaves_to_search=settings["num_leaves_to_search"],
                  training_sample_size=settings["training_sample_size"])
            .score_ah(settings["dimensions_per_block"],
                      anisotropic_quantization_threshold=settings[
                          "anisotropic_quantization_threshold"])
            .reorder(settings["reorder"]))


def exact_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int):
    """Exact maximum inner product search: (row indices, scores), each [queries, k]."""
    return top_k_scores(DotScores(queries, embeddings), k)


def recall_against_exact(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate top-k found."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(a[:k], e)) / k
                          for a, e in zip(approximate, exact)]))


def neighbours_searched(k: int, history_length: int, num_items: int) -> int:
    """How many neighbours a served ScaNN search asks for: k more than the history's
    length, so that k remain once the request's history is dropped."""
    return min(min(k, num_items) + history_length, num_items)


# ScannState's tensors, in the order its constructor takes them.
SCANN_STATE = ("scann_config", "serialized_partitioner", "datapoint_to_token", "ah_codebook",
               "hashed_dataset", "int8_dataset", "int8_multipliers", "dp_norms", "dataset")
STATE_FILE = "scann_state.json"


@dataclasses.dataclass
class BuiltIndex:
    """What `build_index` wrote: its settings (saved with it) and the searcher's state, a
    tf.Module that an exported SavedModel can hold as it is."""
    settings: dict
    state: Any


def build_scann_state(candidate_embeddings: np.ndarray, settings: dict):
    """A TF-ops ScaNN searcher over [catalogue, d] built with `settings`, as its state
    (scann_ops.ScannState: the variables a SavedModel saves)."""
    searcher = scann_builder(candidate_embeddings, settings, tensorflow_ops=True).build()
    state = searcher.serialize_to_module()
    # The builder's searcher is a resource under a random name, which TensorFlow would
    # keep for the process's life (a copy of the catalogue per build).
    tf.raw_ops.DestroyResourceOp(resource=searcher.searcher_handle, ignore_lookup_error=True)
    return state


def save_scann_state(state, folder: Path) -> None:
    """ScannState -> files in `folder`: strings (configs, small) as serialized tensors,
    numbers as .npy (a serialized tensor caps at 2 GB, which a big catalogue's float
    dataset can pass)."""
    folder.mkdir(parents=True, exist_ok=True)
    dtypes = {}
    for name in SCANN_STATE:
        value = tf.convert_to_tensor(getattr(state, name))
        if value.dtype == tf.string:
            tf.io.write_file(str(folder / f"{name}.pb"), tf.io.serialize_tensor(value))
        else:
            np.save(folder / f"{name}.npy", value.numpy())
        dtypes[name] = value.dtype.name
    (folder / STATE_FILE).write_text(json.dumps(dtypes, indent=2))


def load_scann_state(folder: Path):
    """`save_scann_state`'s files -> a ScannState."""
    from scann.scann_ops.py import scann_ops

    dtypes = json.loads((folder / STATE_FILE).read_text())
    tensors = [tf.io.parse_tensor(tf.io.read_file(str(folder / f"{name}.pb")), tf.string)
               if dtypes[name] == "string" else np.load(folder / f"{name}.npy")
               for name in SCANN_STATE]
    return scann_ops.ScannState(tensors)


def scann_search(state):
    """ScannState -> search(queries [n, d], k, leaves_to_search=None) -> (catalogue rows
    [n, k], scores [n, k]), on one thread. One tf.function of a fixed signature: the
    searcher the state recreates is a resource its kernel builds on the first call and
    keeps; a trace per query shape would build and keep one more each."""
    from scann.scann_ops.py import scann_ops

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
    def search(queries, k, leaves):
        return scann_ops.searcher_from_module(state).search_batched(
            queries, final_num_neighbors=k, leaves_to_search=leaves)

    def run(queries: np.ndarray, k: int, leaves_to_search: Optional[int] = None):
        rows, scores = search(tf.constant(np.asarray(queries, np.float32)),
                              tf.constant(k, tf.int32),
                              tf.constant(-1 if leaves_to_search is None
                                          else leaves_to_search, tf.int32))
        return rows.numpy(), scores.numpy()
    return run


def build_index(candidate_embeddings: np.ndarray, item_ids, directory: Path,
                k: int = 100) -> BuiltIndex:
    """Builds the ScaNN searcher for top-`k` searches and writes it with the embeddings,
    ids and settings; atomic."""
    directory = Path(directory)
    settings = scann_settings(len(candidate_embeddings), k)
    started = time.time()
    state = build_scann_state(candidate_embeddings, settings)
    settings["build_seconds"] = round(time.time() - started, 3)
    # Folders of this process's own: two builds at once do not clear each other's.
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_scann_state(state, tmp / "scann")
    np.save(tmp / "candidate_embeddings.npy", candidate_embeddings.astype(np.float32))
    (tmp / "item_ids.json").write_text(json.dumps([str(i) for i in item_ids]))
    (tmp / "settings.json").write_text(json.dumps(settings, indent=2))
    old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return BuiltIndex(settings, state)


class Index:
    """A built index: ScaNN search and exact brute force over the same embeddings."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        if not (directory / "scann" / STATE_FILE).exists():
            raise FileNotFoundError(f"no index in {directory} (or one of an older towerrec): "
                                    f"run `towerrec index` first")
        self.settings = json.loads((directory / "settings.json").read_text())
        self.embeddings = np.load(directory / "candidate_embeddings.npy")
        self.item_ids = np.array(json.loads((directory / "item_ids.json").read_text()),
                                 dtype=object)
        self.rows = scann_search(load_scann_state(directory / "scann"))

    def search(self, queries: np.ndarray, k: int = 10):
        """[n, dim] -> (item ids [n, k], scores [n, k]) from ScaNN."""
        rows, scores = self.rows(queries, k)
        return self.item_ids[rows], scores

    def brute_force(self, queries: np.ndarray, k: int = 10):
        rows, scores = exact_top_k(np.asarray(queries, np.float32), self.embeddings, k)
        return self.item_ids[rows], scores
