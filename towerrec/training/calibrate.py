"""The item prior's settings, chosen on validation data (`prior.calibrate`).

A second model trains on the training split carved as the test was
(`validation_splits`: the same protocol, another seed); on its held-out splits every
half-life and weight of a small grid is scored, and the best kept. The test is never
looked at. Requests with a history (warm, future) choose `weight_with_history`, requests
without one (cold_user) `weight_without_history`, and the half-life is the one best for
both together (the sum over those splits of log(NDCG@10 with the prior / without)). With
a cold_item split, the new items' quantile is the lowest that finds them as often as no
prior does (`_new_item_quantile`); otherwise it is the config's.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from typing import Dict, List, Optional

from towerrec.data.features import Queries
from towerrec.data.splits import save_splits, validation_splits
from towerrec.evaluation.evaluate import (
    candidate_embeddings,
    evaluate_scores,
    query_embeddings,
    retrieval_scores,
    split_queries,
)
from towerrec.stages import stage
from towerrec.training.prior import NO_PRIOR, PriorSettings, save_prior
from towerrec.training.run import Run
from towerrec.training.train import train

import numpy as np

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
CALIBRATION_DIR = "calibration"
HALF_LIVES_DAYS = (None, 3.0, 7.0, 14.0, 30.0, 90.0)
WEIGHTS = (0.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
METRIC = "ndcg_at_10"
NEW_ITEM_QUANTILES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
NEW_ITEM_METRIC = "recall_at_100"
MIN_PART_USERS = 20


@dataclasses.dataclass
class _Held:
    """A validation split's queries, their embeddings, and whether they have a history."""
    name: str
    queries: Queries
    embeddings: np.ndarray
    with_history: bool


def calibrate_prior(run: Run) -> PriorSettings:
    """Chooses `run`'s prior on validation data when its config asks for it, saves it with
    the model, and returns it (the run's as it was otherwise)."""
    config = run.config
    if not config.prior.calibrate:
        return run.prior
    directory = config.run_path / CALIBRATION_DIR
    shutil.rmtree(directory, ignore_errors=True)
    splits = validation_splits(run.splits["train"], config.split)
    save_splits(splits, directory / "splits")
    with stage("calibrate prior: train on the validation split"):
        validation = train(dataclasses.replace(config, run_dir=str(directory)),
                           encoder_dir=run.text_inputs.encoder.directory, verbose=0,
                           prior=NO_PRIOR)
    with stage("calibrate prior: grid"):
        settings = choose(validation, config.prior)
    shutil.rmtree(directory, ignore_errors=True)
    run.prior = settings
    save_prior(settings, config.run_path / "model")
    log.info(describe(settings))
    return settings


def _subset(queries: Queries, keep: np.ndarray) -> Queries:
    """The queries where `keep` (bool [n]) holds."""
    rows = np.flatnonzero(keep)
    return Queries(queries.user_id[rows], queries.history[rows], queries.context_text[rows],
                   [queries.targets[r] for r in rows], [queries.exclude[r] for r in rows],
                   None if queries.time is None else queries.time[rows])


def held_out(validation: Run) -> List[_Held]:
    """The validation splits judged by NDCG@10 (all but cold_item), each split's queries
    with a history apart from those without one (their weights are chosen apart)."""
    held = []
    for name in (s for s in validation.splits if s not in ("train", "cold_item")):
        if not len(validation.splits[name]):
            continue
        queries = split_queries(validation, name)
        has_history = (queries.history != "").any(axis=1)
        for with_history, keep in ((True, has_history), (False, ~has_history)):
            # A split all of one kind is judged whole; of a mixed one, the parts with
            # enough users to vote (a handful of users would weigh as much as a split).
            if keep.all() or keep.sum() >= MIN_PART_USERS:
                if keep.all():
                    part, label = queries, name
                else:
                    part = _subset(queries, keep)
                    label = f"{name} ({'with' if with_history else 'no'} history)"
                held.append(_Held(label, part, query_embeddings(validation, part),
                                  with_history))
    return held


def choose(validation: Run, prior_config) -> PriorSettings:
    """The best settings of the grid on `validation`'s held-out splits (judged by NDCG@10;
    the weight for queries with a history and the one for queries without one apart).
    With no held-out query to judge by, the config's settings, said so."""
    held = held_out(validation)
    if not held:
        log.warning("item prior: no validation split to choose it on; the config's settings "
                    "are used")
        return PriorSettings.from_config(prior_config)
    candidates = candidate_embeddings(validation)
    # scores[half_life][split][weight]
    scores: Dict[Optional[float], Dict[str, List[float]]] = {}
    for half_life in HALF_LIVES_DAYS:
        scores[half_life] = {h.name: [
            _metric(validation, h, candidates, PriorSettings(
                half_life, w, w, prior_config.new_item_quantile)) for w in WEIGHTS]
            for h in held}

    def fit(half_life):
        return sum(np.log(max(max(s), 1e-9) / max(s[0], 1e-9))
                   for s in scores[half_life].values())

    half_life = max(HALF_LIVES_DAYS, key=fit)
    weights = {}
    for with_history in (True, False):
        judged = [h.name for h in held if h.with_history == with_history]
        if judged:
            total = np.sum([scores[half_life][name] for name in judged], axis=0)
            weights[with_history] = WEIGHTS[int(np.argmax(total))]
    chosen = {"calibrated": True, "metric": METRIC, "validation": {
        h.name: {"without_prior": scores[half_life][h.name][0],
                 "with_prior": scores[half_life][h.name][
                     WEIGHTS.index(weights[h.with_history])]} for h in held}}
    settings = PriorSettings(
        half_life, weights.get(True, prior_config.weight_with_history),
        weights.get(False, prior_config.weight_without_history),
        prior_config.new_item_quantile, chosen)
    if "cold_item" in validation.splits and len(validation.splits["cold_item"]):
        settings = _new_item_quantile(validation, candidates, settings)
        # The figures of the settings as chosen: the quantile moves new items' scores.
        for h in held:
            settings.chosen["validation"][h.name]["with_prior"] = _metric(
                validation, h, candidates, settings)
    return settings


def _new_item_quantile(validation: Run, candidates: np.ndarray,
                       settings: PriorSettings) -> PriorSettings:
    """The lowest quantile of NEW_ITEM_QUANTILES at which new items are found as often
    (Recall@100 on the cold_item split) as with no prior at all: the prior is for ranking
    known items, not for burying new ones."""
    queries = split_queries(validation, "cold_item")
    held = _Held("cold_item", queries, query_embeddings(validation, queries), True)
    without = _metric(validation, held, candidates, NO_PRIOR, NEW_ITEM_METRIC)
    quantile, reach = NEW_ITEM_QUANTILES[-1], None
    for q in NEW_ITEM_QUANTILES:
        reach = _metric(validation, held, candidates,
                        dataclasses.replace(settings, new_item_quantile=q), NEW_ITEM_METRIC)
        if reach >= without:
            quantile = q
            break
    chosen = dict(settings.chosen, cold_item={
        "metric": NEW_ITEM_METRIC, "without_prior": without, "with_prior": reach})
    return dataclasses.replace(settings, new_item_quantile=quantile, chosen=chosen)


def _metric(run: Run, held: _Held, candidates: np.ndarray, settings: PriorSettings,
            metric: str = METRIC) -> float:
    scores = retrieval_scores(dataclasses.replace(run, prior=settings), held.queries,
                              candidates, held.embeddings)
    return evaluate_scores(scores, held.queries)[metric]


def describe(settings: PriorSettings) -> str:
    half_life = ("all-time counts" if settings.half_life_days is None
                 else f"half-life {settings.half_life_days:g} days")
    line = (f"item prior: {half_life}, weight {settings.weight_with_history:g} with a "
            f"history, {settings.weight_without_history:g} without")
    line += f"; new items start at the {settings.new_item_quantile:g} quantile"
    validation = settings.chosen.get("validation")
    if validation:
        line += "; chosen on validation, NDCG@10 " + ", ".join(
            f"{name} {v['without_prior']:.4f} -> {v['with_prior']:.4f}"
            for name, v in validation.items())
    cold = settings.chosen.get("cold_item")
    if cold:
        line += (f", cold_item Recall@100 {cold['without_prior']:.4f} -> "
                 f"{cold['with_prior']:.4f}")
    return line
