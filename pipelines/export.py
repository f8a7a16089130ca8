"""`towerrec export`: SavedModels in the TF Serving layout, models/<name>/<version>/.

Every model takes raw request features (strings for text: tokenization is in the graph) and
has a `serving_default` signature with named inputs and outputs:

* query_tower:     user_id [n] str, history [n, h] str ("" padded), context_text [n] str
                   -> query_embedding [n, d]
* candidate_tower: item_id [n] str, item_text [n] str, <categorical> [n] str ("a|b"),
                   <numeric> [n] float -> candidate_embedding [n, d]
* retrieval_brute_force: the query inputs -> item_ids [n, k] str, scores [n, k]
                   (pure TensorFlow: loads in stock TF Serving, CPU, GPU or TPU)
* retrieval_scann: the same through a ScaNN searcher (needs the ScaNN ops)

A version is written to a temporary folder and renamed into place, so a reader (TF Serving
polls the base path) never sees half a version.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

import towers  # noqa: F401
import tensorflow as tf

SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["TFText"])
SCANN_SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["TFText", "Scann"])
# Every model `export_models` writes, in order.
MODELS = ("query_tower", "candidate_tower", "retrieval_brute_force", "retrieval_scann")


class _TextEncoding(tf.Module):
    """Raw strings -> the frozen sentence embedding (preprocessor + encoder in the graph)."""

    def __init__(self, encoder_dir: Path):
        super().__init__()
        import tensorflow_text  # noqa: F401

        self.preprocessor = tf.saved_model.load(str(Path(encoder_dir) / "preprocessor"))
        self.encoder = tf.saved_model.load(str(Path(encoder_dir) / "encoder"))

    def __call__(self, texts):
        return self.encoder(self.preprocessor(texts), training=False)


def query_signature() -> Dict[str, tf.TensorSpec]:
    """History of any width: QueryModel pads or cuts it to the tower's history length."""
    return {"user_id": tf.TensorSpec([None], tf.string, "user_id"),
            "history": tf.TensorSpec([None, None], tf.string, "history"),
            "context_text": tf.TensorSpec([None], tf.string, "context_text")}


def candidate_signature(categorical: List[str], numeric: List[str]):
    spec = {"item_id": tf.TensorSpec([None], tf.string, "item_id"),
            "item_text": tf.TensorSpec([None], tf.string, "item_text")}
    spec.update({c: tf.TensorSpec([None], tf.string, c) for c in categorical})
    spec.update({c: tf.TensorSpec([None], tf.float32, c) for c in numeric})
    return spec


class QueryModel(tf.Module):
    def __init__(self, query_tower, text: _TextEncoding, history_length: int):
        super().__init__()
        self.query_tower = query_tower
        self.text = text
        self.history_length = history_length

    def embed(self, request):
        history = request["history"][:, -self.history_length:]
        missing = self.history_length - tf.shape(history)[1]
        history = tf.pad(history, [[0, 0], [missing, 0]], constant_values="")
        return self.query_tower({
            "user_id": request["user_id"], "history": history,
            "context": self.text(request["context_text"])}, training=False)


class CandidateModel(tf.Module):
    def __init__(self, candidate_tower, text: _TextEncoding):
        super().__init__()
        self.candidate_tower = candidate_tower
        self.text = text

    def embed(self, request):
        features = dict(request)
        features["item_text"] = self.text(request["item_text"])
        return self.candidate_tower(features, training=False)


class _Catalogue(tf.Module):
    """Item ids and their rows, so that the items of a request's history are not returned."""

    def __init__(self, item_ids):
        super().__init__()
        ids = np.asarray(item_ids, dtype=str).astype(object)
        self.item_ids = tf.Variable(ids, trainable=False, dtype=tf.string)
        self.rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                                tf.range(len(ids), dtype=tf.int64)), -1)

    def without_history(self, scores, history, rows=None):
        """scores [n, m] over catalogue rows `rows` [n, m] (all rows when None) -> the
        same with -inf where the item is in that request's history."""
        seen = self.rows.lookup(history)                                   # [n, h]
        if rows is None:
            rows = tf.broadcast_to(tf.range(tf.shape(scores)[1], dtype=tf.int64),
                                   tf.shape(scores))
        hit = tf.reduce_any(rows[:, :, None] == seen[:, None, :], axis=2)  # [n, m]
        return tf.where(hit, tf.constant(-np.inf, scores.dtype), scores)

    def top_k(self, scores, k, rows=None):
        top = tf.math.top_k(scores, k=k)
        indices = top.indices if rows is None else tf.gather(rows, top.indices, batch_dims=1)
        return {"item_ids": tf.gather(self.item_ids, indices), "scores": top.values}


class BruteForceRetrieval(tf.Module):
    """Exact top-k over the catalogue's embeddings, in plain TensorFlow ops; items of the
    request's history are not returned."""

    def __init__(self, query: QueryModel, embeddings: np.ndarray, item_ids, k: int):
        super().__init__()
        self.query = query
        self.catalogue = _Catalogue(item_ids)
        self.candidate_embeddings = tf.Variable(embeddings, trainable=False)
        self.k = min(k, len(item_ids))

    def retrieve(self, request):
        scores = tf.matmul(self.query.embed(request), self.candidate_embeddings,
                           transpose_b=True)
        history = request["history"][:, -self.query.history_length:]
        return self.catalogue.top_k(self.catalogue.without_history(scores, history), self.k)


class ScannRetrieval(tf.Module):
    """Top-k through a ScaNN searcher (TF ops; the searcher state is saved with the model).

    It asks ScaNN for k + history_length neighbours, so that k remain once the items of
    the request's history are dropped.
    """

    def __init__(self, query: QueryModel, embeddings: np.ndarray, item_ids, k: int):
        super().__init__()
        from pipelines.index import scann_builder, scann_settings

        self.query = query
        self.catalogue = _Catalogue(item_ids)
        self.k = min(k, len(item_ids))
        self.searched = min(self.k + query.history_length, len(item_ids))
        settings = scann_settings(len(embeddings), k=self.searched)
        # The searcher's state as variables of this module, so that the SavedModel holds it.
        self.scann_state = scann_builder(
            embeddings, settings, tensorflow_ops=True).build().serialize_to_module()

    def retrieve(self, request):
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.searcher_from_module(self.scann_state)
        rows, scores = searcher.search_batched(self.query.embed(request),
                                               final_num_neighbors=self.searched)
        rows = tf.cast(rows, tf.int64)
        history = request["history"][:, -self.query.history_length:]
        scores = self.catalogue.without_history(scores, history, rows)
        return self.catalogue.top_k(scores, self.k, rows)


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in Path(model_dir).glob("*") if p.name.isdigit()]
    return max(versions, default=0) + 1


def save_version(module: tf.Module, function, signature: Dict[str, tf.TensorSpec],
                 output_name: Optional[str], model_dir: Path,
                 options: tf.saved_model.SaveOptions = SAVE_OPTIONS,
                 version: Optional[int] = None,
                 warmup_request: Optional[Dict[str, np.ndarray]] = None) -> Path:
    """Saves `module` with `serving_default` = function(**signature), atomically, with
    `warmup_request` as its TF Serving warm-up record."""
    @tf.function(input_signature=[signature])
    def serving_default(request):
        outputs = function(request)
        return outputs if output_name is None else {output_name: outputs}

    module.serving_default = serving_default
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_dir)
    final = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": serving_default},
                        options=options)
    if warmup_request is not None:
        write_warmup(tmp, model_dir.name, warmup_request)
    tmp.rename(final)
    return final


def write_warmup(version_dir: Path, model_name: str, request: Dict[str, np.ndarray]):
    """assets.extra/tf_serving_warmup_requests: one PredictionLog TF Serving replays."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    predict = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
    for name, value in request.items():
        predict.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=predict))
    extra = Path(version_dir) / "assets.extra"
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())


def example_requests(run) -> Dict[str, Dict[str, np.ndarray]]:
    """{model name: a small real request for it}, from the run's data (warm-up, tests)."""
    from pipelines.evaluate import training_queries

    queries = training_queries(run, 2)
    query = {"user_id": queries.user_id[:2].astype(bytes),
             "history": queries.history[:2].astype(bytes),
             "context_text": queries.context_text[:2].astype(bytes)}
    candidate = {}
    for name, values in run.catalogue.items():
        values = values[:2]
        candidate[name] = values.astype(bytes) if values.dtype == object else values
    return {name: candidate if name == "candidate_tower" else query for name in MODELS}


def export_models(run, base_path: Path, k: int = 100,
                  models: Optional[List[str]] = None) -> Dict[str, Path]:
    """Exports every model of `run` under `base_path`, one new version each."""
    from pipelines.evaluate import candidate_embeddings

    base_path = Path(base_path)
    encoder_dir = run.text_inputs.encoder.directory
    text = _TextEncoding(encoder_dir)
    history_length = run.config.towers.history_length
    query = QueryModel(run.model.query_tower, text, history_length)
    candidate = CandidateModel(run.model.candidate_tower, text)
    embeddings = candidate_embeddings(run)
    item_ids = run.catalogue["item_id"]
    q_spec = query_signature()
    c_spec = candidate_signature(run.dataset.categorical_columns, run.dataset.numeric_columns)
    requests = example_requests(run)
    plan = {
        "query_tower": (query, query.embed, q_spec, "query_embedding", SAVE_OPTIONS),
        "candidate_tower": (candidate, candidate.embed, c_spec, "candidate_embedding",
                            SAVE_OPTIONS),
    }
    brute = BruteForceRetrieval(query, embeddings, item_ids, k)
    plan["retrieval_brute_force"] = (brute, brute.retrieve, q_spec, None, SAVE_OPTIONS)
    scann = ScannRetrieval(query, embeddings, item_ids, k)
    plan["retrieval_scann"] = (scann, scann.retrieve, q_spec, None, SCANN_SAVE_OPTIONS)
    written = {}
    for name, (module, function, spec, output, options) in plan.items():
        if models and name not in models:
            continue
        written[name] = save_version(module, function, spec, output, base_path / name,
                                     options, warmup_request=requests[name])
    return written
