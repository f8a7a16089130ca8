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
* ranker:          the query inputs, item_ids [n, k] str (retrieval's order) -> scores [n, k]
* recommender:     the query inputs -> item_ids, titles [n, 10] str, scores [n, 10],
                   is_new [n, 10] bool: brute-force retrieval of 100, reranked, a new item
                   in the slot retrieval gave it (pure TensorFlow)
* recommender_scann: the same with ScaNN's top k instead of brute force, for big
                   catalogues (needs the ScaNN ops, as retrieval_scann)

A history names items by id or by title. The graphs are in towerrec/export/graphs.py.

A version is written to a temporary folder and renamed into place (towerrec/export/publish.py),
so a reader (TF Serving polls the base path) never sees half a version.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.data.features import utf8
from towerrec.export.publish import (
    MODELS,
    PROVENANCE,
    RANKED_MODELS,
    discard,
    exclusive,
    publish,
    staged_dir,
)
from towerrec.towers.text_encoder import SAVE_OPTIONS

import numpy as np
import tensorflow as tf

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
SCANN_SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["TFText", "Scann"])
def stage_version(module: tf.Module, function, signature: Dict[str, tf.TensorSpec],
                  output_name: Optional[str], model_dir: Path,
                  options: tf.saved_model.SaveOptions = SAVE_OPTIONS,
                  warmup_request: Optional[Dict[str, np.ndarray]] = None,
                  provenance: Optional[dict] = None) -> Path:
    """Saves `module` with `serving_default` = function(**signature) into
    model_dir/.tmp-<next version>, with `warmup_request` as its TF Serving warm-up record.
    Nothing polls a dot folder; `publish` renames it into place."""
    @tf.function(input_signature=[signature])
    def serving_default(request):
        outputs = function(request)
        return outputs if output_name is None else {output_name: outputs}

    module.serving_default = serving_default
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = staged_dir(model_dir)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": serving_default},
                        options=options)
    if warmup_request is not None:
        write_warmup(tmp, model_dir.name, warmup_request)
    if provenance is not None:
        (tmp / PROVENANCE).parent.mkdir(exist_ok=True)
        (tmp / PROVENANCE).write_text(json.dumps(provenance))
    return tmp


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


def example_queries(run):
    """The queries of `example_requests`: the first two training users', the second
    without its id and history."""
    from towerrec.evaluation.evaluate import training_queries

    queries = training_queries(run, 2)
    queries.user_id[1:] = ""
    queries.history[1:] = ""
    return queries


def example_requests(run) -> Dict[str, Dict[str, np.ndarray]]:
    """{model name: a small real request for it}, from the run's data (warm-up, tests): a
    known user with a history, and a new user (the second's context only)."""
    queries = example_queries(run)
    query = {"user_id": utf8(queries.user_id[:2]), "history": utf8(queries.history[:2]),
             "context_text": utf8(queries.context_text[:2])}
    candidate = {}
    for name, values in run.catalogue.items():
        values = values[:2]
        candidate[name] = utf8(values) if values.dtype == object else values
    ranked = np.stack([run.catalogue["item_id"][:5], run.catalogue["item_id"][5:10]])
    requests = {name: query for name in MODELS}
    requests["candidate_tower"] = candidate
    requests["ranker"] = {**query, "item_ids": utf8(ranked)}
    return requests


def export_models(run, base_path: Path, k: Optional[int] = None,
                  models: Optional[List[str]] = None, stage_only: bool = False,
                  candidate_embeddings: Optional[np.ndarray] = None,
                  index=None) -> Dict[str, Path]:
    """Exports every model of `run` under `base_path`, one new version each, all staged
    first and then renamed into place, under the base path's lock (with `stage_only`, left
    staged for the caller, who holds the lock, to `publish` or `discard`).
    `ranker` and `recommender` need a trained ranker (`towerrec train-ranker`); without
    one they are skipped, with a message. `candidate_embeddings` [catalogue, d]: the
    catalogue's, when computed elsewhere (embed-catalogue); else computed here.
    `index`: the run's index built over them (a BuiltIndex, `index_and_export`), whose
    ScaNN searcher the ScaNN exports then hold; else one is built here."""
    base_path = Path(base_path)
    # The catalogue's lookup files live here until the SavedModels have copied them.
    with tempfile.TemporaryDirectory(prefix="towerrec-export-") as table_dir:
        return _export_models(run, base_path, Path(table_dir), k, models, stage_only,
                              candidate_embeddings, index)


def _export_models(run, base_path: Path, table_dir: Path, k: Optional[int],
                   models: Optional[List[str]], stage_only: bool,
                   embedded: Optional[np.ndarray], index) -> Dict[str, Path]:
    from towerrec.evaluation.evaluate import candidate_embeddings
    from towerrec.export.graphs import (
        BruteForceRetrieval,
        CandidateModel,
        Catalogue,
        QueryModel,
        Ranking,
        Recommender,
        ScannRetrieval,
        TextEncoding,
        candidate_signature,
        query_signature,
        ranker_signature,
    )
    from towerrec.training.prior import served_candidates
    from towerrec.training.rank import load_ranker, ranker_exists, serving_features
    from towerrec.training.train import check_finite

    k = k or run.config.ranker.retrieved
    text = TextEncoding(run.text_inputs.encoder.directory)
    catalogue = Catalogue(run.catalogue["item_id"], run.dataset.items["title"], table_dir)
    prior = None if run.prior.off else run.prior.served_weights()
    query = QueryModel(run.model.query_tower, text, catalogue,
                       run.config.towers.history_length, prior)
    candidate = CandidateModel(run.model.candidate_tower, text)
    embeddings = served_candidates(run, check_finite(
        candidate_embeddings(run) if embedded is None else embedded, "candidate embeddings"))
    q_spec = query_signature()
    c_spec = candidate_signature(run.dataset.categorical_columns, run.dataset.numeric_columns)
    brute = BruteForceRetrieval(query, embeddings, k)
    searchers: List[ScannRetrieval] = []

    def scann():
        """One ScaNN searcher, shared by retrieval_scann and recommender_scann (the run's
        index's when given one: a build is the costly step of a big catalogue)."""
        if not searchers:
            searchers.append(ScannRetrieval(query, embeddings, k, index))
        return searchers[0]

    wanted = [m for m in MODELS if not models or m in models]
    plan = {
        "query_tower": lambda: (query, query.embed, q_spec, "query_embedding", SAVE_OPTIONS),
        "candidate_tower": lambda: (candidate, candidate.embed, c_spec, "candidate_embedding",
                                    SAVE_OPTIONS),
        "retrieval_brute_force": lambda: (brute, brute.retrieve, q_spec, None, SAVE_OPTIONS),
        "retrieval_scann": lambda: _scann(scann(), q_spec),
    }
    if ranker_exists(run):
        ranking = Ranking(brute, load_ranker(run), serving_features(run))
        recommended = run.config.ranker.recommended
        recommender = Recommender(ranking, recommended)
        plan["ranker"] = lambda: (ranking, ranking.rank, ranker_signature(), None,
                                  SAVE_OPTIONS)
        plan["recommender"] = lambda: (recommender, recommender.recommend, q_spec, None,
                                       SAVE_OPTIONS)
        plan["recommender_scann"] = lambda: _scann(
            Recommender(ranking, recommended, retrieval=scann()), q_spec, "recommend")
    else:
        skipped = [m for m in RANKED_MODELS if m in wanted]
        if skipped:
            log.warning(f"not exported: {', '.join(skipped)} (no trained ranker: run "
                        f"`towerrec train-ranker --config ...` first)")
    requests = example_requests(run)
    provenance = {"run_dir": str(Path(run.config.run_dir).resolve())}
    staged = {}
    with exclusive(base_path):
        try:
            for name in wanted:
                if name in plan:
                    module, function, spec, output, options = plan[name]()
                    staged[name] = stage_version(module, function, spec, output,
                                                 base_path / name, options, requests[name],
                                                 provenance)
        except BaseException:
            discard(staged)
            raise
        return staged if stage_only else publish(staged)


def _scann(module, spec, method: str = "retrieve"):
    return module, getattr(module, method), spec, None, SCANN_SAVE_OPTIONS


@dataclasses.dataclass
class IndexBuilt:
    """The run's rebuilt index (its settings) and the versions exported, if any."""
    index: Dict[str, Any]
    exports: Dict[str, Path]


def index_and_export(run, embeddings: np.ndarray,
                     model_base_path: Optional[Path] = None) -> IndexBuilt:
    """What `towerrec index` (and, given a base path, `towerrec export`) build, from the
    catalogue's candidate embeddings [catalogue, d] (computed once, here or by Beam). One
    ScaNN build serves both: the exports search with the index's searcher, built for as
    many neighbours as they ask."""
    from towerrec.export.index import INDEX_DIR, build_index, neighbours_searched
    from towerrec.training.prior import served_candidates
    from towerrec.training.train import check_finite

    embeddings = check_finite(embeddings, "catalogue embeddings")
    k = neighbours_searched(run.config.ranker.retrieved, run.config.towers.history_length,
                            len(embeddings))
    built = build_index(served_candidates(run, embeddings), run.catalogue["item_id"],
                        run.config.run_path / INDEX_DIR, k=k)
    exports = (export_models(run, model_base_path, candidate_embeddings=embeddings,
                             index=built)
               if model_base_path else {})
    return IndexBuilt(built.settings, exports)
