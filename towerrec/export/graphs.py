"""The tf.Modules that `towerrec export` saves: raw request features in, answers out.

Text is tokenized and encoded in the graph; a request's history may name items by id or
by title ("Star Wars (1977)", "star wars", "The Matrix" for "Matrix, The (1999)").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.data.features import utf8
from towerrec.towers.features import NO_ROW, host_variable
from towerrec.towers.ranking import rerank_order
from towerrec.towers.ranking_features import RankingFeatures
from towerrec.towers.text_encoder import trim_tokens

import numpy as np
import tensorflow as tf

_YEAR = r"\s*\(\d{4}\)$"


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


def ranker_signature() -> Dict[str, tf.TensorSpec]:
    spec = query_signature()
    spec["item_ids"] = tf.TensorSpec([None, None], tf.string, "item_ids")
    return spec


def title_keys(title: str) -> List[str]:
    """The lookup keys of a title: "Matrix, The (1999)" -> "matrix, the (1999)",
    "matrix, the", "the matrix"."""
    full = " ".join(title.lower().split())
    bare = re.sub(_YEAR, "", full)
    keys = [full, bare]
    article = re.match(r"^(.*), (the|a|an|la|le|les|il|el|der|die|das)$", bare)
    if article:
        keys.append(f"{article.group(2)} {article.group(1)}")
    return keys


def _row_table(path: Path) -> tf.lookup.StaticHashTable:
    """A file of "key<TAB>row" lines -> a key -> row table. Initialized from the file, which
    the SavedModel carries as an asset: a graph constant would put a catalogue in
    saved_model.pb (protobuf caps it at 2 GB)."""
    return tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        str(path), tf.string, 0, tf.int64, 1, delimiter="\t"), NO_ROW)


def _write_rows(keys: Iterable[str], rows: Iterable[int], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{key}\t{row}\n" for key, row in zip(keys, rows))
    return path


class TextEncoding(tf.Module):
    """Raw strings [n] -> the frozen sentence embeddings [n, hidden] (preprocessor and
    encoder in the graph), at the cost of the request's own tokens (`trim_tokens`). A
    batch of empty texts (a request with only a history) skips the encoder: its answer is
    the embedding of "", computed once here."""

    def __init__(self, encoder_dir: Path):
        super().__init__()
        import tensorflow_text  # noqa: F401

        self.preprocessor = tf.saved_model.load(str(Path(encoder_dir) / "preprocessor"))
        self.encoder = tf.saved_model.load(str(Path(encoder_dir) / "encoder"))
        self.empty_text = tf.Variable(self._encode(tf.constant([""]))[0], trainable=False,
                                      name="empty_text_embedding")

    def _encode(self, texts):
        return self.encoder(trim_tokens(self.preprocessor(texts)), training=False)

    def __call__(self, texts):
        return tf.cond(tf.reduce_all(texts == ""),
                       lambda: tf.tile(self.empty_text[None], [tf.size(texts), 1]),
                       lambda: self._encode(texts))


class Catalogue(tf.Module):
    """Item ids, titles and their catalogue rows (`table_dir`: where the lookup tables'
    files are written; the SavedModel copies them into its assets)."""

    def __init__(self, item_ids, titles, table_dir: Path):
        super().__init__()
        ids = [str(i) for i in item_ids]
        self.item_ids = host_variable(utf8(ids), tf.string)
        self.titles = host_variable(utf8(titles), tf.string)
        self.rows = _row_table(_write_rows(ids, range(len(ids)),
                                           Path(table_dir) / "catalogue_rows.tsv"))
        by_title: Dict[str, int] = {}
        for row, title in enumerate(titles):
            for key in title_keys(str(title)):
                if key:  # "" is history padding, never an item
                    by_title.setdefault(key, row)  # the first item of a repeated title
        self.title_rows = _row_table(_write_rows(by_title.keys(), by_title.values(),
                                                 Path(table_dir) / "title_rows.tsv"))

    def resolve(self, history):
        """Item ids or titles [n, h] -> catalogue rows [n, h] (NO_ROW: "" or unknown)."""
        rows = self.rows.lookup(history)
        key = tf.strings.lower(tf.strings.strip(history))
        key = tf.strings.regex_replace(key, r"\s+", " ")
        by_title = self.title_rows.lookup(key)
        by_title = tf.where(by_title >= 0, by_title,
                            self.title_rows.lookup(tf.strings.regex_replace(key, _YEAR, "")))
        return tf.where(rows >= 0, rows, by_title)

    def ids(self, rows):
        """Catalogue rows -> item ids ("" for NO_ROW)."""
        return tf.where(rows >= 0, tf.gather(self.item_ids, tf.maximum(rows, 0)), "")


class QueryModel(tf.Module):
    """A request (user_id, history of ids or titles, context_text) -> query embeddings, and
    the vectors retrieval searches with.

    `prior_weights` (with a history, without one): the query end of the item prior's
    column (towerrec.training.prior.PriorSettings.served_weights); a search vector then
    ends with the request's one, and the candidates it is searched against with their
    scaled log prior. None: no prior.
    """

    def __init__(self, query_tower, text: TextEncoding, catalogue: Catalogue,
                 history_length: int, prior_weights: Optional[Tuple[float, float]] = None):
        super().__init__()
        self.prior_weights = prior_weights
        self.query_tower = query_tower
        # Tracked here, not by the tower: its catalogue-sized tables are saved with the
        # export (as variables), not with the tower's weights.
        self.query_features = query_tower.preprocess
        self.text = text
        self.catalogue = catalogue
        self.history_length = history_length

    def history_rows(self, request):
        """[n, history_length] catalogue rows of the request's last known items, most
        recent last, NO_ROW padded on the left as in training. A request may pad its
        history ("") on either side; unknown entries are dropped, not counted."""
        rows = self.catalogue.resolve(request["history"])
        known_last = tf.argsort(tf.cast(rows != NO_ROW, tf.int32), axis=1, stable=True)
        rows = tf.gather(rows, known_last, batch_dims=1)[:, -self.history_length:]
        missing = self.history_length - tf.shape(rows)[1]
        return tf.pad(rows, [[0, 0], [missing, 0]], constant_values=NO_ROW)

    def embed(self, request, history_rows=None):
        """Query embeddings [n, d]; `history_rows`: the request's, when already resolved."""
        features = self.query_features({
            "user_id": request["user_id"],
            "history_rows": (self.history_rows(request) if history_rows is None
                             else history_rows),
            "context": self.text(request["context_text"])})
        return self.query_tower(features, training=False)

    def search(self, request):
        """(search vectors [n, d] or, with a prior, [n, d + 1]; history rows [n, h])."""
        rows = self.history_rows(request)
        query = self.embed(request, rows)
        if self.prior_weights is None:
            return query, rows
        with_history, without = self.prior_weights
        weight = tf.where(tf.reduce_any(rows != NO_ROW, axis=1, keepdims=True),
                          tf.constant(with_history, query.dtype),
                          tf.constant(without, query.dtype))
        return tf.concat([query, weight], axis=1), rows


class CandidateModel(tf.Module):
    def __init__(self, candidate_tower, text: TextEncoding):
        super().__init__()
        self.candidate_tower = candidate_tower
        self.text = text

    def embed(self, request):
        features = dict(request)
        features["item_text"] = self.text(request["item_text"])
        return self.candidate_tower(self.candidate_tower.preprocess(features), training=False)


def without_history(scores, history_rows, rows=None):
    """scores [n, m] over catalogue rows `rows` [n, m] (all rows when None) -> the same
    with -inf where the item is in that request's history."""
    minus_inf = tf.constant(-np.inf, scores.dtype)
    if rows is None:  # the whole catalogue: write -inf at the history's rows, O(n * h)
        batch = tf.broadcast_to(tf.range(tf.shape(history_rows, out_type=tf.int64)[0])[
            :, None], tf.shape(history_rows, out_type=tf.int64))
        at = tf.stack([batch, history_rows], axis=-1)[history_rows >= 0]
        return tf.tensor_scatter_nd_update(scores, at, tf.fill([tf.shape(at)[0]], minus_inf))
    hit = tf.reduce_any(rows[:, :, None] == history_rows[:, None, :], axis=2)
    return tf.where(hit, minus_inf, scores)


class BruteForceRetrieval(tf.Module):
    """Exact top-k over the catalogue's embeddings, in plain TensorFlow ops; items of the
    request's history are not returned."""

    def __init__(self, query: QueryModel, embeddings: np.ndarray, k: int):
        super().__init__()
        self.query = query
        self.candidate_embeddings = host_variable(embeddings)
        self.k = min(k, len(embeddings))

    def top_k(self, request):
        """(search vectors [n, d], catalogue rows [n, k], scores [n, k])."""
        query, history_rows = self.query.search(request)
        scores = tf.matmul(query, self.candidate_embeddings, transpose_b=True)
        top = tf.math.top_k(without_history(scores, history_rows), k=self.k)
        return query, tf.cast(top.indices, tf.int64), top.values

    def retrieve(self, request):
        _, rows, scores = self.top_k(request)
        return {"item_ids": self.query.catalogue.ids(rows), "scores": scores}


class ScannRetrieval(tf.Module):
    """Top-k through a ScaNN searcher (TF ops; the searcher state is saved with the model).

    It asks ScaNN for k + history_length neighbours, so that k remain once the items of
    the request's history are dropped. `built`: the run's index (`build_index`'s
    BuiltIndex) over the same embeddings, whose searcher it holds; else one is built here.
    """

    def __init__(self, query: QueryModel, embeddings: np.ndarray, k: int, built=None):
        super().__init__()
        from towerrec.export.index import build_scann_state, neighbours_searched, scann_settings

        self.query = query
        self.k = min(k, len(embeddings))
        self.searched = neighbours_searched(k, query.history_length, len(embeddings))
        if built is None:
            state = build_scann_state(embeddings, scann_settings(len(embeddings),
                                                                 k=self.searched))
        else:
            state, items = built.state, int(tf.shape(built.state.dataset)[0])
            if items != len(embeddings) or built.settings["k"] < self.searched:
                raise ValueError(
                    f"the index's ScaNN searcher ({items} items, built for "
                    f"{built.settings['k']} neighbours) cannot serve {len(embeddings)} "
                    f"items at {self.searched} neighbours")
        # The searcher's state as variables of this module, so that the SavedModel holds it.
        self.scann_state = state

    def top_k(self, request):
        """(search vectors [n, d], catalogue rows [n, k], scores [n, k])."""
        from scann.scann_ops.py import scann_ops

        query, history_rows = self.query.search(request)
        searcher = scann_ops.searcher_from_module(self.scann_state)
        rows, scores = searcher.search_batched(query, final_num_neighbors=self.searched)
        rows = tf.cast(rows, tf.int64)
        scores = without_history(scores, history_rows, rows)
        top = tf.math.top_k(scores, k=self.k)
        return query, tf.gather(rows, top.indices, batch_dims=1), top.values

    def retrieve(self, request):
        _, rows, scores = self.top_k(request)
        return {"item_ids": self.query.catalogue.ids(rows), "scores": scores}


class Ranking(tf.Module):
    """The ranker over given candidates: a request and item_ids [n, k] in retrieval order
    -> ranker scores [n, k] (-inf for an id the catalogue does not know)."""

    def __init__(self, retrieval: BruteForceRetrieval, ranker, features: RankingFeatures):
        super().__init__()
        self.retrieval = retrieval
        self.ranker = ranker
        self.features = features

    def score(self, request, query, rows):
        """Ranker scores [n, k] of catalogue rows [n, k] for the request's search vectors."""
        embeddings = tf.gather(self.retrieval.candidate_embeddings, tf.maximum(rows, 0))
        retrieval_scores = tf.reduce_sum(query[:, None, :] * tf.cast(embeddings, query.dtype),
                                         axis=2)
        features = self.features(self.retrieval.query.history_rows(request), rows,
                                 retrieval_scores)
        scores = self.ranker(features, training=False)
        return tf.where(rows >= 0, scores, -np.inf)

    def rank(self, request):
        rows = self.retrieval.query.catalogue.rows.lookup(request["item_ids"])
        query, _ = self.retrieval.query.search(request)
        return {"scores": self.score(request, query, rows)}


class Recommender(tf.Module):
    """One request -> the final top-n: retrieval of k (brute force, or `retrieval`: a
    ScannRetrieval for big catalogues), reranked, new items in the slots retrieval gave
    them. Outputs item_ids, titles, scores (the ranker's) and is_new (the item had no
    interactions, so it holds retrieval's slot) [n, top]."""

    def __init__(self, ranking: Ranking, top: int, retrieval=None):
        super().__init__()
        self.ranking = ranking
        self.retrieval = retrieval or ranking.retrieval
        self.top = min(top, self.retrieval.k)

    def recommend(self, request):
        query, rows, _ = self.retrieval.top_k(request)
        scores = self.ranking.score(request, query, rows)
        is_new = self.ranking.features.is_new(rows)
        order = rerank_order(scores, is_new)[:, :self.top]
        rows = tf.gather(rows, order, batch_dims=1)
        catalogue = self.ranking.retrieval.query.catalogue
        return {"item_ids": catalogue.ids(rows), "titles": tf.gather(catalogue.titles, rows),
                "scores": tf.gather(scores, order, batch_dims=1),
                "is_new": tf.gather(is_new, order, batch_dims=1)}
