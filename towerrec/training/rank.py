"""`towerrec train-ranker`: a ranker trained on what retrieval actually returns.

Retrieval has seen every training interaction, so its lists for training users would put
their training items on top for free. The ranker's lists therefore come from a second
retrieval model trained on each user's earlier 80% of training interactions (under
`split.protocol: future`, on the training data before a time cut, as the test was carved),
with 10% of the items held out entirely (they are new items to it, as cold items are at
serving); the later interactions are the positives the ranker learns to lift within those
lists. Every user gives
two lists: one with their id and history (a warm request) and one with the context text
alone (a new user's request). At serving (and in evaluation) the ranker rescores the full
retrieval model's top-K with item tables built from all training interactions.

Loss: listwise (softmax over each list against its positives). A reranker only changes the
order within a list, and the listwise loss is about exactly that order; a pointwise loss
spends its capacity on calibrating absolute scores that reranking never uses.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import Config
from towerrec.data.features import (
    Queries,
    catalogue_rows,
    evaluation_queries,
    sample_users,
    utf8,
)
from towerrec.data.splits import future_split, hold_out_last, save_splits
from towerrec.evaluation.evaluate import (
    ranking_metrics,
    retrieval_scores,
    split_queries,
    split_size,
    target_hits,
)
from towerrec.evaluation.topk import top_k_scores
from towerrec.export.publish import MODEL_WEIGHTS
from towerrec.memory import release_memory
from towerrec.towers.ranking import Ranker, rerank_order
from towerrec.towers.ranking_features import NO_ROW, ItemTables, RankingFeatures
from towerrec.training.prior import load_prior
from towerrec.training.run import Run, load_run, trained_towers
from towerrec.training.train import train

import numpy as np
import pandas as pd
import tensorflow as tf

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
RANKER_DIR = "ranker"
# "Recent" popularity: interactions in the latest 10% of the data's time span.
RECENT_FRACTION = 0.1
# Item-item co-occurrence is computed for a chunk of items at a time, sized so that the
# chunk's (user, item, item) products are at most this many.
COOCCURRENCE_BUDGET = 1 << 23
# What item_attributes encodes, saved with a ranker: the candidate tower's layers.
ATTRIBUTE_ENCODING = "candidate_tower"


@dataclasses.dataclass
class CandidateLists:
    """Each query's retrieved top-K: catalogue rows [n, K], retrieval scores [n, K], the
    query's history rows [n, h] (NO_ROW padded) and labels [n, K] (1: a held-out item)."""
    rows: np.ndarray
    scores: np.ndarray
    history_rows: np.ndarray
    labels: np.ndarray


def item_attributes(run: Run, batch_size: int = 4096) -> np.ndarray:
    """[catalogue, attributes]: the candidate tower's own attribute encoding of every
    catalogue item (multi-hots with their unknown column, standardized numerics with their
    missing flag), with the vocabularies and statistics the towers were trained with."""
    def tensor(values: np.ndarray) -> tf.Tensor:
        return tf.constant(utf8(values) if values.dtype == object else values)

    preprocess = run.model.candidate_tower.preprocess
    columns = sorted({*preprocess.categorical, *preprocess.numeric})
    size = len(run.catalogue["item_id"])
    return np.concatenate([
        preprocess.attributes({c: tensor(run.catalogue[c][start:start + batch_size])
                               for c in columns}, min(batch_size, size - start)).numpy()
        for start in range(0, max(size, 1), batch_size)])


def cooccurrence_neighbours(rows: np.ndarray, users: np.ndarray, num_items: int,
                            neighbours: int, history: Optional[int] = None,
                            budget: int = COOCCURRENCE_BUDGET):
    """Interactions (catalogue rows, user codes; in time order) -> per item, its
    `neighbours` items most often seen by the same users, by cosine, best first and the
    lower row first among equal weights: (rows [items, m] with NO_ROW padding,
    weights [items, m]). With `history`, only each user's last `history` interactions
    count: a user's items give quadratically many pairs."""
    from scipy import sparse

    if history is not None:
        keep = _last_per_user(users, history)
        rows, users = rows[keep], users[keep]
    pairs = np.unique(np.stack([users, rows], axis=1), axis=0)
    seen = sparse.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])),
                             shape=(int(users.max()) + 1 if len(users) else 0, num_items))
    by_item = seen.T.tocsr()
    norm = np.sqrt(np.maximum(np.diff(by_item.indptr), 1).astype(np.float32))
    m = min(neighbours, max(num_items - 1, 1))
    out_rows = np.full([num_items, m], NO_ROW, np.int64)
    out_weights = np.zeros([num_items, m], np.float32)
    work = by_item @ np.diff(seen.indptr).astype(np.float64)  # products per item row
    for start, stop in _chunks(work, budget):
        item, other, weight = _cosines(by_item[start:stop] @ seen, norm, start)
        order = np.lexsort((other, -weight, item))
        item, other, weight = item[order], other[order], weight[order]
        per_item = np.bincount(item - start, minlength=stop - start)
        rank = np.arange(len(item)) - np.repeat(np.cumsum(per_item) - per_item, per_item)
        kept = rank < m
        out_rows[item[kept], rank[kept]] = other[kept]
        out_weights[item[kept], rank[kept]] = weight[kept]
    return out_rows, out_weights


def _last_per_user(users: np.ndarray, history: int) -> np.ndarray:
    """bool [n]: is interaction i among its user's last `history` (in the given order)."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users)
    position = np.empty(len(users), np.int64)
    position[order] = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    return position >= counts[users] - history


def _chunks(work: np.ndarray, budget: float):
    """(start, stop) of consecutive items whose summed `work` is at most `budget` (at
    least one item each)."""
    total = np.concatenate([[0.0], np.cumsum(work)])
    start = 0
    while start < len(work):
        stop = int(np.searchsorted(total, total[start] + budget, side="right")) - 1
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def _cosines(counts, norm: np.ndarray, start: int):
    """A sparse [chunk, items] block of co-occurrence counts (chunk rows from `start`) ->
    (item, other item, cosine float32) of its nonzeros, an item with itself left out."""
    counts = counts.tocoo()
    item, other = counts.row.astype(np.int64) + start, counts.col.astype(np.int64)
    apart = item != other
    item, other = item[apart], other[apart]
    weight = counts.data[apart] / (norm[item] * norm[other])  # float32 throughout
    return item, other, weight


def item_tables(run: Run, interactions: pd.DataFrame) -> ItemTables:
    """The ranker's item tables from `interactions` (items without any are new items).
    The text table is left to `ranking_features`, which shares the query tower's."""
    item_ids = run.catalogue["item_id"]
    interactions = interactions.sort_values("timestamp", kind="stable")
    rows = catalogue_rows(item_ids, interactions["item_id"].to_numpy())
    counts = np.bincount(rows, minlength=len(item_ids)).astype(np.float32)
    times = interactions["timestamp"].to_numpy()
    cut = times.max() - RECENT_FRACTION * (times.max() - times.min()) if len(times) else 0
    recent = np.bincount(rows[times >= cut], minlength=len(item_ids)).astype(np.float32)
    users = pd.factorize(interactions["user_id"])[0]
    neighbours, weights = cooccurrence_neighbours(
        rows, users, len(item_ids), run.config.ranker.neighbours,
        history=run.config.ranker.cooccurrence_history)
    return ItemTables(attributes=item_attributes(run), text=None,
                      popularity=np.log1p(counts), recent_popularity=np.log1p(recent),
                      neighbours=neighbours, neighbour_weights=weights)


def ranking_features(run: Run, interactions: pd.DataFrame) -> RankingFeatures:
    """The ranker's features over `interactions`' item tables and the text table of the
    run's query tower (one copy of it in memory and in every export)."""
    return RankingFeatures(item_tables(run, interactions),
                           text=run.model.query_tower.preprocess.catalogue_text)


def history_rows(run: Run, history: np.ndarray) -> np.ndarray:
    """Item ids [n, h] ("" padded) -> catalogue rows [n, h] (NO_ROW for "" or unknown)."""
    return catalogue_rows(run.catalogue["item_id"], history)


def candidate_lists(run: Run, queries: Queries, k: Optional[int] = None) -> CandidateLists:
    """Retrieval's top-k per query (training items excluded), labelled by the targets."""
    k = k or run.config.ranker.retrieved
    rows, scores = top_k_scores(retrieval_scores(run, queries), k, queries.exclude)
    return CandidateLists(rows, scores, history_rows(run, queries.history),
                          target_hits(rows, queries.targets).astype(np.float32))


def list_features(features: RankingFeatures, lists: CandidateLists,
                  batch_size: int = 256) -> np.ndarray:
    """[n, K, F] features of every candidate of every list."""
    return np.concatenate([
        features(lists.history_rows[s:s + batch_size], lists.rows[s:s + batch_size],
                 lists.scores[s:s + batch_size]).numpy()
        for s in range(0, len(lists.rows), batch_size)])


def rerank(ranker: Ranker, features: RankingFeatures, lists: CandidateLists,
           batch_size: int = 1024) -> np.ndarray:
    """Catalogue rows [n, K] in the reranked order (new items keep their slots). Lists are
    scored `batch_size` at a time: the ranker's activations for 45k lists of 100 would be
    gigabytes."""
    x = list_features(features, lists)
    orders = [rerank_order(ranker(tf.constant(x[s:s + batch_size]), training=False),
                           features.is_new(lists.rows[s:s + batch_size])).numpy()
              for s in range(0, len(x), batch_size)]
    order = np.concatenate(orders) if orders else np.zeros_like(lists.rows)
    return np.take_along_axis(lists.rows, order, axis=1)


def held_out(values: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """A seeded random `fraction` of the distinct `values`."""
    distinct = np.array(sorted(set(values)), dtype=object)
    return distinct[np.random.default_rng(seed).random(len(distinct)) < fraction]


def _early_retrieval(config: Config):
    """The retrieval model the ranker's lists come from, and its held-out interactions
    {"later": warm users' later 20%, "new_users": held-out users' interactions}, carved
    from the run's saved training split. Reused when an earlier `train-ranker` trained it
    from the same config."""
    directory = config.run_path / RANKER_DIR / "retrieval"
    early_config = dataclasses.replace(config, run_dir=str(directory))
    encoder_dir = config.run_path / "encoder"
    saved = directory / "model" / "config.json"
    if saved.exists() and _without_ranker(json.loads(saved.read_text())) == _without_ranker(
            json.loads(json.dumps(dataclasses.asdict(early_config)))):
        early = load_run(early_config, encoder_dir=encoder_dir)
        return early, {name: early.splits[name] for name in ("later", "new_users")}
    shutil.rmtree(directory, ignore_errors=True)
    train_split = pd.read_parquet(config.run_path / "splits" / "train.parquet")
    new_users = held_out(train_split["user_id"], config.ranker.new_user_fraction,
                         config.split.seed + 1)
    new_items = held_out(train_split["item_id"], config.split.cold_item_fraction,
                         config.split.seed + 2)
    is_new_user = train_split["user_id"].isin(new_users)
    if config.split.protocol == "future":  # the lists are carved as the test was
        carved = future_split(train_split[~is_new_user], config.split.future_fraction)
        earlier, later = carved["train"], carved["future"]
    else:
        earlier, later = hold_out_last(train_split[~is_new_user],
                                       config.split.warm_test_fraction)
    earlier = earlier[~earlier["item_id"].isin(new_items)]
    splits = {"train": earlier, "later": later, "new_users": train_split[is_new_user]}
    save_splits(splits, directory / "splits")
    log.info(f"ranker lists: retrieval trained on {len(earlier)} earlier interactions; "
             f"{len(new_items)} items and {len(new_users)} users held out as new")
    early = train(early_config, encoder_dir=encoder_dir, verbose=0)
    return early, {name: splits[name] for name in ("later", "new_users")}


def _without_ranker(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "ranker"}


def train_ranker(config: Config, verbose: int = 2) -> Dict:
    """Trains the ranker, saves it, and returns two-stage metrics per split. The run's
    two-tower model is loaded for the evaluation only, once the list-making model and the
    lists are gone: at a million items each holds gigabytes."""
    if not (config.run_path / MODEL_WEIGHTS).exists():
        raise FileNotFoundError(f"no trained model in {config.run_path / 'model'}: run "
                                "`towerrec train --config ...` first")
    # The list-making model is built as the run's model was trained, whatever the config
    # says of the towers now (see `trained_towers`).
    config = trained_towers(config, config.run_path / "model")
    ranker = _fit_ranker(config, verbose)
    release_memory()
    return evaluate_two_stages(load_run(config), ranker)


def _fit_ranker(config: Config, verbose: int) -> Ranker:
    """The ranker, trained on lists of a retrieval model that has not seen their answers,
    and saved in the run folder."""
    early, held = _early_retrieval(config)
    # Its lists are retrieved as the served model's are: with the run's item prior.
    early.prior = load_prior(config.run_path / "model", config.prior)
    earlier = early.splits["train"]
    history_length = config.towers.history_length
    queries = [evaluation_queries(
        sample_users(held[name], config.ranker.list_users, config.split.seed + 3), earlier,
        early.catalogue["item_id"], history_length, known_users=known)
        for name, known in (("later", True), ("new_users", False))]
    features = ranking_features(early, earlier)
    lists = [candidate_lists(early, q) for q in queries]
    x = np.concatenate([list_features(features, part) for part in lists])
    labels = np.concatenate([part.labels for part in lists])
    x, labels = x[labels.sum(axis=1) > 0], labels[labels.sum(axis=1) > 0]
    log.info(f"ranker training lists: {len(x)} queries x {x.shape[1]} candidates, "
             f"{x.shape[2]} features, {labels.sum():.0f} positives")

    r = config.ranker
    tf.keras.utils.set_random_seed(config.training.seed)
    ranker = Ranker(x.shape[2])
    ranker.normalize.adapt(x.reshape(-1, x.shape[2]))
    ranker.compile(optimizer=tf.keras.optimizers.Adam(r.learning_rate))
    log_dir = config.run_path / "logs" / "ranker" / time.strftime("%Y%m%d-%H%M%S")
    ranker.fit(tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(
        len(x), seed=config.training.seed).batch(r.batch_size), epochs=r.epochs,
        verbose=verbose, callbacks=[tf.keras.callbacks.TensorBoard(log_dir=str(log_dir))])
    save_ranker(ranker, config.run_path / RANKER_DIR)
    return ranker


def save_ranker(ranker: Ranker, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(ranker=ranker).write(str(directory / "weights"))
    (directory / "ranker.json").write_text(json.dumps({
        "num_features": ranker.num_features, "attribute_encoding": ATTRIBUTE_ENCODING}))


def ranker_exists(run: Run) -> bool:
    return (run.config.run_path / RANKER_DIR / "weights.index").exists()


def load_ranker(run: Run) -> Ranker:
    directory = run.config.run_path / RANKER_DIR
    if not (directory / "weights.index").exists():
        raise FileNotFoundError(
            f"no trained ranker in {directory}: run `towerrec train-ranker` first")
    saved = json.loads((directory / "ranker.json").read_text())
    if saved.get("attribute_encoding") != ATTRIBUTE_ENCODING:
        log.warning(f"the ranker in {directory} was trained on an older item attribute table "
                    "(without the candidate tower's unknown-value and missing columns): its "
                    "attribute overlap now reads slightly other values; retrain it with "
                    "`towerrec train-ranker`")
    ranker = Ranker(saved["num_features"])
    ranker(tf.zeros([1, 1, saved["num_features"]]))
    tf.train.Checkpoint(ranker=ranker).read(str(directory / "weights")).expect_partial()
    # tf_keras Normalization reads its statistics from tensors computed at build time, not
    # from the restored variables: recompute them, or the ranker sees unnormalized inputs.
    ranker.normalize.finalize_state()
    return ranker


def serving_features(run: Run) -> RankingFeatures:
    """The feature tables the ranker is served with: all training interactions."""
    return ranking_features(run, run.splits["train"])


def evaluate_two_stages(run: Run, ranker: Ranker) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{"retrieval": {split: metrics}, "retrieval+rerank": {split: metrics}}: Recall@K for
    the config's ks (the reranked list is retrieval's top K in another order) and NDCG@10."""
    features = serving_features(run)
    results: Dict[str, Dict[str, Dict[str, float]]] = {"retrieval": {},
                                                        "retrieval+rerank": {}}
    for split in run.splits:
        if split == "train":
            continue
        queries = split_queries(run, split)
        lists = candidate_lists(run, queries)
        for name, rows in (("retrieval", lists.rows),
                           ("retrieval+rerank", rerank(ranker, features, lists))):
            metrics = ranking_metrics(rows, queries.targets, ks=run.config.evaluation.ks)
            metrics["users_total"] = split_size(run, split)
            results[name][split] = metrics
    return results
