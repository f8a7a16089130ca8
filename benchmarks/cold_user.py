"""cold_user against popularity: where towerrec stands, and what any item prior could reach.

    python benchmarks/cold_user.py [--config configs/movielens.yaml] [--seeds 42,43,44]

Issue 11 asks for cold_user NDCG@10 >= 1.05x popularity with retrieval alone. For each
split seed this loads the towerrec run that `benchmarks/baselines.py` trained
(<run_dir>-benchmark/per_user-seed<s>), or trains one the same way there (the config,
its item prior calibrated on validation; no ranker), and prints cold_user NDCG@10 (±
its standard error) and its ratio to the benchmark's popularity, for:

* popularity: all training interaction counts, the benchmark's baseline. Under the
  per_user split the training data holds other users' interactions from after a new
  user's requests, and these counts see them.
* popularity before the request: the counts strictly before each request's time, what
  towerrec's item prior is held to (it never looks past a request's time).
* recent popularity, 14 and 30 days' half-life, before the request.
* towerrec: the tower + the calibrated prior, as benchmarked; and the tower alone.
* towerrec, prior chosen on the test: the best half-life and weight of the calibration's
  grid for this split's test users. An upper bound: no rule that never sees the test
  split does better on average.
* towerrec, served prior: the prior an export holds (counts up to the end of training,
  for every request), its half-life and weight chosen on the test too.

Then the mean ratio over the seeds of each. Every figure is a ratio within one seed's
run, on the same users.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from towerrec.config import Config, load_config  # noqa: E402
from towerrec.data.features import Queries  # noqa: E402
from towerrec.evaluation.evaluate import (  # noqa: E402
    candidate_embeddings,
    evaluate_scores,
    query_embeddings,
    retrieval_scores,
    split_queries,
)
from towerrec.pipelines.cli import log_pipeline_steps  # noqa: E402
from towerrec.training.calibrate import HALF_LIVES_DAYS, WEIGHTS, calibrate_prior  # noqa: E402
from towerrec.training.prior import NO_PRIOR, PriorSettings  # noqa: E402
from towerrec.training.run import Run, load_run  # noqa: E402
from towerrec.training.train import train  # noqa: E402

from baselines import popularity, prior_alone  # noqa: E402

SPLIT = "cold_user"
METRIC = "ndcg_at_10"
BASELINE = "popularity"


def seed_run(config: Config, seed: int) -> Run:
    """The benchmark's towerrec run of split seed `seed`: loaded, or trained and calibrated."""
    one = dataclasses.replace(config, split=dataclasses.replace(config.split, seed=seed),
                              run_dir=f"{config.run_dir}-benchmark/per_user-seed{seed}")
    if (one.run_path / "model" / "weights.index").exists():
        return load_run(one)
    run = train(one, verbose=0)
    calibrate_prior(run)
    return run


def best_prior(run: Run, queries: Queries, candidates: np.ndarray,
               embeddings: np.ndarray) -> Dict[str, dict]:
    """{"at request time" / "served": {"value", "se", "note"}}: the test's best NDCG@10
    over the calibration grid (half-lives x weights) with the prior at each request's time
    and at serving time, and where each was found."""
    served = dataclasses.replace(queries, time=None)
    best: Dict[str, dict] = {}
    for half_life in HALF_LIVES_DAYS:
        for weight in WEIGHTS:
            settings = PriorSettings(half_life, weight, weight, run.prior.new_item_quantile)
            for name, asked in (("at request time", queries), ("served", served)):
                scores = retrieval_scores(dataclasses.replace(run, prior=settings), asked,
                                          candidates, embeddings)
                value = evaluate_scores(scores, asked)[METRIC]
                if value > best.get(name, {"value": -1.0})["value"]:
                    best[name] = {"value": value, "se": None,
                                  "note": f"half-life {half_life}, weight {weight:g}"}
    return best


def measure(run: Run) -> Dict[str, dict]:
    """{model: {"value", "se", "note"}} of NDCG@10 on the run's cold_user split."""
    queries = split_queries(run, SPLIT)
    candidates = candidate_embeddings(run)
    embeddings = query_embeddings(run, queries)

    def scored(scores, asked: Queries = queries, note: str = "") -> dict:
        metrics = evaluate_scores(scores, asked)
        return {"value": metrics[METRIC], "se": metrics[f"{METRIC}_se"], "note": note}

    tower_alone = dataclasses.replace(run, prior=NO_PRIOR)
    best = best_prior(run, queries, candidates, embeddings)
    return {
        BASELINE: scored(popularity(run)[""]()(queries)),
        "popularity before the request": scored(prior_alone(run, None)(queries)),
        "recent popularity, 14 days": scored(prior_alone(run, 14.0)(queries)),
        "recent popularity, 30 days": scored(prior_alone(run, 30.0)(queries)),
        "towerrec (calibrated prior)": scored(
            retrieval_scores(run, queries, candidates, embeddings),
            note=f"half-life {run.prior.half_life_days}, weight "
                 f"{run.prior.weight_without_history:g}"),
        "towerrec, tower alone": scored(
            retrieval_scores(tower_alone, queries, candidates, embeddings)),
        "towerrec, prior chosen on the test": best["at request time"],
        "towerrec, served prior chosen on the test": best["served"],
    }


def report(per_seed: Dict[int, Dict[str, dict]]) -> None:
    ratios: Dict[str, List[float]] = {}
    for seed, results in per_seed.items():
        base = results[BASELINE]["value"]
        print(f"\n## split seed {seed}: cold_user NDCG@10\n")
        print("| model | NDCG@10 | / popularity | |")
        print("|---|---|---|---|")
        for name, r in results.items():
            se = f" ± {r['se']:.4f}" if r["se"] is not None else ""
            ratios.setdefault(name, []).append(r["value"] / base)
            print(f"| {name} | {r['value']:.4f}{se} | {r['value'] / base:.3f}x | "
                  f"{r['note']} |")
    print(f"\n## mean over the seeds ({', '.join(map(str, per_seed))}): NDCG@10 / "
          f"popularity\n")
    for name, values in ratios.items():
        print(f"- {name}: **{np.mean(values):.3f}x** "
              f"({' / '.join(f'{v:.3f}' for v in values)})")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: built-in)")
    parser.add_argument("--seeds", default="42,43,44", help="split seeds (per_user)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    log_pipeline_steps()
    started = time.time()
    per_seed = {seed: measure(seed_run(config, seed))
                for seed in (int(s) for s in args.seeds.split(","))}
    report(per_seed)
    print(f"\n({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
