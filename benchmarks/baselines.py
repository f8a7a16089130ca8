"""towerrec against seven baselines, on the same saved splits, tuned fairly.

    python benchmarks/baselines.py [--config configs/movielens.yaml] [--seeds 42,43,44]
        [--protocols per_user,future]

Two split protocols (towerrec.data.splits): "per_user" (warm, cold_item, cold_user),
run once per split seed, and "future" (one global time cut; the cut has no seed), run once.
Each run trains towerrec (retrieval alone, and retrieve 100 then rerank with the DCN ranker
trained in the same run) on its training split, and seven baselines:

* popularity: training interaction counts.
* recent_popularity: counts before the query's time, each decayed by its age (half-life
  tuned): towerrec's item prior alone.
* tfrs_basic: the TFRS basic-retrieval tutorial model, user and item id embeddings only.
* als: implicit-feedback ALS (the `implicit` package).
* ease: EASE (Steck 2019), closed-form item-item regression.
* rp3beta: RP3beta (Paudel et al. 2017), a popularity-damped random walk.
* content: frozen MiniLM; a user is the mean text embedding of their history items (a new
  user: the embedding of their context text).

Every baseline's setting is chosen from its grid on validation splits carved out of the
training split the way the test was carved (`validation_splits`), by the metric each split
is judged by, then refitted on the whole training split and measured once on the test.
towerrec runs its config, and chooses its item prior's settings (half-life, weights) on
the same kind of validation split (`towerrec.training.calibrate`), never on the test.
Prints a markdown table per run, then the mean and spread over the seeds, and each towerrec
figure's ratio to the best baseline per split and metric. Writes everything to
<run_dir>-benchmark.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from towerrec.config import Config, load_config  # noqa: E402
from towerrec.data.features import Queries  # noqa: E402
from towerrec.data.splits import validation_splits  # noqa: E402
from towerrec.evaluation.evaluate import (  # noqa: E402
    METRIC_NOTE,
    evaluate_run,
    evaluate_scores,
    markdown_table,
    split_queries,
    split_size,
)
from towerrec.evaluation.plots import plot_recall_curves  # noqa: E402
from towerrec.evaluation.topk import DotScores  # noqa: E402
from towerrec.pipelines.cli import log_pipeline_steps  # noqa: E402
from towerrec.training.calibrate import HALF_LIVES_DAYS, calibrate_prior  # noqa: E402
from towerrec.training.prior import (  # noqa: E402
    PriorScores,
    PriorSettings,
    item_log_prior,
    request_buckets,
    serving_time,
)
from towerrec.training.rank import train_ranker  # noqa: E402
from towerrec.training.run import Run  # noqa: E402
from towerrec.training.train import train  # noqa: E402

import tensorflow as tf  # noqa: E402  (after pipelines: the Keras 2 switch)
import tensorflow_recommenders as tfrs  # noqa: E402
from item_models import ease, rp3beta  # noqa: E402

# The metrics each split is judged by; the first is the one settings are chosen by.
JUDGED = {"warm": ("ndcg_at_10", "recall_at_10"),
          "future": ("ndcg_at_10", "recall_at_10"),
          "cold_item": ("recall_at_100",),
          "cold_user": ("ndcg_at_10", "recall_at_100")}
OURS = ("towerrec", "towerrec+rerank")
# queries -> their scores against the catalogue, as user and item vectors (DotScores):
# evaluation scores them a chunk of users at a time, never [users, catalogue] at once.
Scorer = Callable[[Queries], DotScores]
# A baseline: run -> {setting: fit}, where fit() trains that setting and returns its scorer
# (lazily: only the chosen settings are refitted on the whole training split).
Grid = Dict[str, Callable[[], Scorer]]


def _rows(run: Run, ids, column: str) -> np.ndarray:
    row_of = {item: r for r, item in enumerate(run.catalogue[column])}
    return np.array([row_of[i] for i in ids])


def _user_index(run: Run):
    users = sorted(run.splits["train"]["user_id"].unique())
    return {u: i for i, u in enumerate(users)}


def _interactions(run: Run):
    """The training split as a 0/1 csr matrix [users, catalogue] and its user index."""
    train = run.splits["train"]
    user_of = _user_index(run)
    matrix = sp.csr_matrix(
        (np.ones(len(train), np.float32),
         (train["user_id"].map(user_of).to_numpy(), _rows(run, train["item_id"], "item_id"))),
        shape=(len(user_of), len(run.catalogue["item_id"])))
    matrix.data = np.minimum(matrix.data, 1.0)  # duplicates count once
    return matrix, user_of


def popularity(run: Run) -> Grid:
    counts = np.bincount(_rows(run, run.splits["train"]["item_id"], "item_id"),
                         minlength=len(run.catalogue["item_id"])).astype(np.float32)
    return {"": lambda: lambda q: DotScores(np.ones([len(q), 1], np.float32), counts[:, None])}


def prior_alone(run: Run, half_life: Optional[float]) -> Scorer:
    """Each item's share of the training interactions before the query's time, each
    counting 0.5 ** (age / half-life) (a null half-life: 1): towerrec's item prior alone."""
    train = run.splits["train"]
    settings = PriorSettings(half_life, 1.0, 1.0, new_item_quantile=0.0)

    def score(q: Queries) -> PriorScores:
        starts, bucket = request_buckets(q.time, len(q), len(run.catalogue["item_id"]),
                                         serving_time(train))
        prior = item_log_prior(train, run.catalogue["item_id"], starts, settings)
        return PriorScores(np.zeros([len(q), 1]), np.zeros([prior.shape[1], 1]),
                           np.ones(len(q)), prior, bucket)
    return score


def recent_popularity(run: Run) -> Grid:
    """Recent popularity before the query's time (`prior_alone`), the half-life tuned."""
    return {f"half-life {h:g} days": (lambda h=h: prior_alone(run, h))
            for h in HALF_LIVES_DAYS if h is not None}


def als(run: Run) -> Grid:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    matrix, user_of = _interactions(run)

    def fit(factors, reg, alpha) -> Scorer:
        model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha,
                                        iterations=15, random_state=0)
        with threadpool_limits(1, "blas"):  # implicit's own advice: its threads, not BLAS's
            model.fit(matrix, show_progress=False)
        users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
        return lambda q: DotScores(np.stack([
            users[user_of[u]] if u in user_of else np.zeros(users.shape[1])
            for u in q.user_id]), items)

    return {f"factors={f},reg={r},alpha={a}": (lambda f=f, r=r, a=a: fit(f, r, a))
            for f, r, a in itertools.product((32, 64, 128), (0.1, 1.0, 10.0, 100.0),
                                             (1.0, 10.0, 40.0))}


def _item_item(run: Run, weights: Callable[[sp.csr_matrix], np.ndarray]) -> Scorer:
    """A scorer x_u @ B of item-item weights B [catalogue, catalogue] fitted on training."""
    matrix, user_of = _interactions(run)
    items = weights(matrix).T  # DotScores scores users @ items.T

    def score(q: Queries) -> DotScores:
        rows = np.array([user_of.get(u, -1) for u in q.user_id])
        users = np.zeros((len(rows), matrix.shape[1]), np.float32)
        known = rows >= 0
        users[known] = matrix[rows[known]].toarray()
        return DotScores(users, items)
    return score


def ease_baseline(run: Run) -> Grid:
    return {f"l2={l2:g}": (lambda l2=l2: _item_item(run, lambda m: ease(m, l2)))
            for l2 in (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)}


def rp3beta_baseline(run: Run) -> Grid:
    return {f"alpha={a},beta={b},neighbours={k}":
            (lambda a=a, b=b, k=k: _item_item(run, lambda m: rp3beta(m, a, b, k)))
            for a, b, k in itertools.product((0.5, 1.0), (0.0, 0.3, 0.6), (50, 200))}


class _IdTwoTower(tfrs.Model):
    """The TFRS basic-retrieval tutorial: an id embedding on each side."""

    def __init__(self, users, items, dim):
        super().__init__()
        self.user_lookup = tf.keras.layers.StringLookup(vocabulary=users)
        self.item_lookup = tf.keras.layers.StringLookup(vocabulary=items)
        self.user_embedding = tf.keras.layers.Embedding(len(users) + 1, dim)
        self.item_embedding = tf.keras.layers.Embedding(len(items) + 1, dim)
        self.task = tfrs.tasks.Retrieval(metrics=None)

    def user(self, ids):
        return self.user_embedding(self.user_lookup(ids))

    def item(self, ids):
        return self.item_embedding(self.item_lookup(ids))

    def compute_loss(self, features, training=False):
        return self.task(self.user(features["user_id"]), self.item(features["item_id"]),
                         compute_metrics=False)


def tfrs_basic(run: Run) -> Grid:
    train = run.splits["train"]
    catalogue = tf.constant(run.catalogue["item_id"].astype(str))

    def fit(dim, epochs) -> Scorer:
        data = tf.data.Dataset.from_tensor_slices({
            "user_id": train["user_id"].to_numpy().astype(str),
            "item_id": train["item_id"].to_numpy().astype(str)})
        tf.keras.utils.set_random_seed(0)
        model = _IdTwoTower(sorted(train["user_id"].unique()),
                            sorted(train["item_id"].unique()), dim)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
        model.fit(data.shuffle(len(train), seed=0).batch(8192), epochs=epochs, verbose=0)
        items = model.item(catalogue).numpy()
        return lambda q: DotScores(model.user(tf.constant(q.user_id.astype(str))).numpy(),
                                   items)

    # The tutorial trains 3 epochs; more overfits (10, 20 were worse).
    return {f"dim={d},epochs={e}": (lambda d=d, e=e: fit(d, e))
            for d, e in itertools.product((32, 64), (1, 3, 6))}


def content(run: Run) -> Grid:
    item_vectors = run.text_inputs.embed(run.catalogue["item_text"])
    train = run.splits["train"].sort_values("timestamp", kind="stable")
    histories = {u: _rows(run, items, "item_id")
                 for u, items in train.groupby("user_id")["item_id"]}

    def fit(length) -> Scorer:
        def score(q):
            context = run.text_inputs.embed(q.context_text)
            users = np.stack([
                item_vectors[histories[u][-length:]].mean(axis=0) if u in histories
                else context[row] for row, u in enumerate(q.user_id)])
            return DotScores(users, item_vectors)
        return score

    return {(f"last {n} items" if n < 10_000 else "all items"): (lambda n=n: fit(n))
            for n in (1, 2, 5, 10, 20, 50, 10_000)}


BASELINES = {"popularity": popularity, "recent_popularity": recent_popularity,
             "tfrs_basic": tfrs_basic, "als": als,
             "ease": ease_baseline, "rp3beta": rp3beta_baseline, "content": content}
# What a baseline cannot score: an id or item-item model has nothing for a new user (all
# items tie, and ties fall to the catalogue's first rows), and none but content has
# anything for a new item (its score is a constant, not a judgement). Those cells are left
# out, not reported as figures.
NEW = ("cold_item", "cold_user")
UNSCORED = {"popularity": ("cold_item",), "recent_popularity": ("cold_item",),
            "tfrs_basic": NEW, "als": NEW, "ease": NEW,
            "rp3beta": NEW}


def is_towerrec(name: str) -> bool:
    """towerrec, reranked or not, with any history encoder: not a baseline."""
    return name.startswith("towerrec")


def scored(name: str, split: str) -> bool:
    return split not in UNSCORED.get(name, ())


def tune(grid: Grid, queries: Dict[str, Queries]) -> Dict[str, str]:
    """{split: the setting with the best first judged metric on that validation split}."""
    best: Dict[str, tuple] = {}
    for setting, fit in grid.items():
        scorer = fit()
        for split, q in queries.items():
            value = evaluate_scores(scorer(q), q)[JUDGED[split][0]]
            if split not in best or value > best[split][1]:
                best[split] = (setting, value)
    return {split: setting for split, (setting, _) in best.items()}


def towerrec_results(config: Config, name: str = "towerrec"):
    """towerrec trained by `config`, its item prior calibrated, alone and reranked ->
    ({name: metrics, name+rerank: metrics}, the run)."""
    started = time.time()
    run = train(config)
    calibrate_prior(run)
    print(f"{name} trained in {time.time() - started:.0f}s")
    results = {name: evaluate_run(run, curve=True)}
    started = time.time()
    results[f"{name}+rerank"] = train_ranker(config, verbose=0)["retrieval+rerank"]
    print(f"{name}'s ranker trained in {time.time() - started:.0f}s")
    return results, run


def benchmark_run(config: Config, history_encoders: Sequence[str] = ()) -> dict:
    """One split: towerrec (and towerrec with each other history encoder of
    `history_encoders`, as "towerrec[<encoder>]") and every tuned baseline -> {"results",
    "settings", "towerrec_prior"}."""
    results, run = towerrec_results(config)
    for encoder in (e for e in history_encoders if e != config.towers.history_encoder):
        variant = dataclasses.replace(
            config, towers=dataclasses.replace(config.towers, history_encoder=encoder),
            run_dir=f"{config.run_dir}-{encoder}")
        results.update(towerrec_results(variant, f"towerrec[{encoder}]")[0])
    tests = [s for s in run.splits if s != "train"]
    queries = {split: split_queries(run, split) for split in tests}
    validation = dataclasses.replace(run, splits=validation_splits(run.splits["train"],
                                                                    config.split))
    held_out = {split: split_queries(validation, split) for split in tests
                if split in validation.splits and len(validation.splits[split])}
    settings: Dict[str, Dict[str, str]] = {}
    for name, build in BASELINES.items():
        started = time.time()
        settings[name] = tune(build(validation),
                              {k: q for k, q in held_out.items() if scored(name, k)})
        grid, results[name] = build(run), {}
        for setting in set(settings[name].values()):
            scorer = grid[setting]()
            for split in (s for s in tests if settings[name].get(s) == setting):
                results[name][split] = evaluate_scores(scorer(queries[split]), queries[split],
                                                       curve=True)
                results[name][split]["users_total"] = split_size(run, split)
        print(f"{name}: {len(grid)} setting(s) tuned on validation in "
              f"{time.time() - started:.0f}s; chosen " + ", ".join(
                  f"{s}: {v}" for s, v in settings[name].items()))
    print()
    print(markdown_table(results))
    print(f"\n{METRIC_NOTE}\n")
    return {"results": results, "settings": settings,
            "towerrec_prior": dataclasses.asdict(run.prior)}


def summary(runs: List[dict]) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """{model: {split: {metric: {"mean", "min", "max", "values", "se"}}}} over the runs
    that have the split ("se": the standard error of a single run's per-user mean)."""
    out: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for run in runs:
        for model, splits in run["results"].items():
            for split, metrics in ((k, v) for k, v in splits.items() if scored(model, k)):
                for metric in ("recall_at_10", "recall_at_100", "ndcg_at_10"):
                    entry = out.setdefault(model, {}).setdefault(split, {}).setdefault(
                        metric, {"values": [], "se": []})
                    entry["values"].append(metrics[metric])
                    entry["se"].append(metrics.get(f"{metric}_se", float("nan")))
    for splits in out.values():
        for metrics in splits.values():
            for entry in metrics.values():
                values = np.array(entry["values"])
                entry.update(mean=float(values.mean()), min=float(values.min()),
                             max=float(values.max()))
    return out


def verdicts(table: Dict[str, Dict[str, Dict[str, dict]]]) -> Dict[str, dict]:
    """Each towerrec figure against the best baseline of its split and metric (means over
    the seeds)."""
    out = {}
    baselines = [m for m in table if not is_towerrec(m)]
    for model, split in itertools.product(OURS, JUDGED):
        for metric in JUDGED[split]:
            candidates = [b for b in baselines if split in table[b]]
            if split not in table.get(model, {}) or not candidates:
                continue
            best = max(candidates, key=lambda b: table[b][split][metric]["mean"])
            mine, theirs = table[model][split][metric], table[best][split][metric]
            ratio = mine["mean"] / theirs["mean"] if theirs["mean"] else float("inf")
            # Two standard errors of the difference (of one run's per-user means).
            noise = 2 * float(np.hypot(np.nanmean(mine["se"]), np.nanmean(theirs["se"])))
            word = ("within noise" if abs(mine["mean"] - theirs["mean"]) < noise
                    else "BEATS" if mine["mean"] > theirs["mean"] else "BEHIND")
            out[f"{model}/{split}/{metric}"] = {"ratio": ratio, "best_baseline": best,
                                                 model: mine, "baseline": theirs,
                                                 "verdict": word}
            print(f"{model:15s} {split:9s} {metric:13s} {_figure(mine)} vs {best} "
                  f"{_figure(theirs)}  ratio {ratio:.3f}  {word}")
    return out


def _figure(entry: dict) -> str:
    """0.1234 ± 0.0050 (one run: its standard error) or 0.1234 [0.1200-0.1270] (seeds)."""
    if len(entry["values"]) == 1:
        return f"{entry['mean']:.4f} ± {entry['se'][0]:.4f}"
    return (f"{entry['mean']:.4f} [{entry['min']:.4f}-{entry['max']:.4f}] "
            f"(SE ~{float(np.nanmean(entry['se'])):.4f})")


def summary_table(table: Dict[str, Dict[str, Dict[str, dict]]]) -> str:
    lines = ["| model | split | Recall@10 | Recall@100 | NDCG@10 |", "|---|---|---|---|---|"]
    for split in JUDGED:
        for model in table:
            if split in table[model]:
                cells = [_figure(table[model][split][m])
                         for m in ("recall_at_10", "recall_at_100", "ndcg_at_10")]
                lines.append(f"| {model} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: built-in)")
    parser.add_argument("--seeds", default="42,43,44", help="split seeds (per_user)")
    parser.add_argument("--protocols", default="per_user,future")
    parser.add_argument("--history-encoders", default="", metavar="A,B",
                        help="also train towerrec with these towers.history_encoder values "
                             "(reported as towerrec[<encoder>]), e.g. mean,attention")
    parser.add_argument("--summarize", default=None, metavar="JSON",
                        help="only print the summary and verdicts of an earlier run's JSON")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    log_pipeline_steps()  # the library's step reports, as the CLI shows them
    out = Path(f"{config.run_dir}-benchmark.json")
    if args.summarize:
        runs = json.loads(Path(args.summarize).read_text())["runs"]
        report(runs, None)
        plot(runs, Path(args.summarize).with_suffix(""), config.name)
        return
    encoders = [e for e in args.history_encoders.split(",") if e]
    for encoder in encoders:  # a bad name fails now, not after the first training
        dataclasses.replace(config.towers, history_encoder=encoder)
    started = time.time()
    runs = []
    for protocol in args.protocols.split(","):
        seeds = [int(s) for s in args.seeds.split(",")] if protocol == "per_user" else [None]
        for seed in seeds:
            name = protocol + (f"-seed{seed}" if seed is not None else "")
            print(f"\n## {name}\n", flush=True)
            split = dataclasses.replace(config.split, protocol=protocol,
                                        seed=config.split.seed if seed is None else seed)
            one = dataclasses.replace(config, split=split,
                                      run_dir=f"{config.run_dir}-benchmark/{name}")
            runs.append({"name": name, **benchmark_run(one, encoders)})
            out.write_text(json.dumps({"runs": runs}, indent=2))  # kept if a later one fails
    table, verdict = report(runs, time.time() - started)
    out.write_text(json.dumps({"runs": runs, "summary": table, "verdict": verdict},
                              indent=2))
    print(f"\nwrote {out}")
    plot(runs, Path(f"{config.run_dir}-benchmark"), config.name)


def plot(runs: List[dict], directory: Path, title: str) -> None:
    """Recall@K curves per split (mean over the runs) into directory/plots/."""
    curves = mean_curves(runs)
    if not curves:
        print("no Recall@K curves in these runs (written by an older benchmark): no plots")
        return
    for path in plot_recall_curves(curves, directory / "plots", title):
        print(f"wrote {path}")


def mean_curves(runs: List[dict]) -> Dict[str, Dict[str, List[float]]]:
    """{split: {model: Recall@1..100 averaged over the runs}} of the models whose results
    carry a "recall_curve" (the reranked lists do not)."""
    gathered: Dict[str, Dict[str, List[List[float]]]] = {}
    for run in runs:
        for model, splits in run["results"].items():
            for split, metrics in splits.items():
                if "recall_curve" in metrics and scored(model, split):
                    gathered.setdefault(split, {}).setdefault(model, []).append(
                        metrics["recall_curve"])
    return {split: {model: np.mean(curves, axis=0).tolist()
                    for model, curves in models.items()}
            for split, models in gathered.items()}


def report(runs: List[dict], seconds):
    """Prints the summary table and the verdicts of `runs`; returns both."""
    table = summary(runs)
    took = f" ({seconds:.0f} s)" if seconds is not None else ""
    print(f"\n## Over {len(runs)} run(s){took}: mean [min-max] over the split seeds; one "
          "run: ± its standard error\n")
    print(summary_table(table))
    print()
    return table, verdicts(table)


if __name__ == "__main__":
    main()
