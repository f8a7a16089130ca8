"""The item prior: hand-computed decayed counts, no look past the request, new items."""
from __future__ import annotations

from towerrec.training.prior import (
    DAY,
    SMOOTHING,
    PriorScores,
    PriorSettings,
    decayed_counts,
    item_log_prior,
    log_prior,
    request_buckets,
)

import numpy as np
import pandas as pd
import pytest

# item 0 at day 0 and day 2, item 1 at day 1; item 2 never.
ROWS = np.array([0, 1, 0])
TIMES = np.array([0.0, 1.0, 2.0]) * DAY


def test_hand_computed_decayed_counts_count_only_what_came_before():
    decayed, plain = decayed_counts(ROWS, TIMES, 3, np.array([3.0, 1.0]) * DAY,
                                    half_life_days=1.0)
    # At day 1: item 0 one day old (0.5); item 1's interaction is not strictly before.
    np.testing.assert_allclose(decayed[1], [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(plain[1], [1, 0, 0])
    # At day 3: item 0 three days and one day old, item 1 two days old.
    np.testing.assert_allclose(decayed[0], [0.125 + 0.5, 0.25, 0.0])
    np.testing.assert_array_equal(plain[0], [2, 1, 0])
    all_time, _ = decayed_counts(ROWS, TIMES, 3, [3.0 * DAY], half_life_days=None)
    np.testing.assert_array_equal(all_time[0], [2, 1, 0])


def test_interactions_at_or_after_the_request_time_change_nothing():
    at = np.array([1.5, 2.0]) * DAY
    before, _ = decayed_counts(ROWS, TIMES, 3, at, 7.0)
    later_rows = np.concatenate([ROWS, [2, 2, 1]])
    later_times = np.concatenate([TIMES, np.array([2.0, 5.0, 9.0]) * DAY])
    after, _ = decayed_counts(later_rows, later_times, 3, at, 7.0)
    np.testing.assert_array_equal(before, after)


def test_log_prior_is_a_smoothed_share_and_new_items_take_the_quantile():
    decayed = np.array([[3.0, 1.0, 0.0, 0.0]])
    plain = np.array([[3, 1, 0, 0]])
    total = 4.0 + 4 * SMOOTHING
    known = np.log(np.array([3.5, 1.5]) / total)
    for quantile, new in ((0.0, known[1]), (1.0, known[0]),
                          (0.5, np.quantile(known, 0.5))):
        np.testing.assert_allclose(log_prior(decayed, plain, quantile)[0],
                                   [known[0], known[1], new, new], rtol=1e-6)


def test_item_log_prior_reads_ids_and_leaves_unknown_ids_out():
    interactions = pd.DataFrame({"item_id": ["b", "a", "b", "zz"],
                                 "timestamp": [0, DAY, 2 * DAY, 0]})
    settings = PriorSettings(None, 1.0, 1.0, new_item_quantile=0.0)
    prior = item_log_prior(interactions, np.array(["a", "b", "c"], dtype=object),
                           np.array([3 * DAY]), settings)
    total = 3 + 3 * SMOOTHING
    np.testing.assert_allclose(np.exp(prior[0]), [1.5 / total, 2.5 / total, 1.5 / total],
                               rtol=1e-6)  # "c" is new: the lowest known share


def test_prior_scores_are_the_dot_product_plus_each_querys_prior_row():
    rng = np.random.default_rng(0)
    queries, candidates = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    weights, prior = rng.random(5), rng.normal(size=(2, 7))
    row = np.array([0, 1, 1, 0, 1])
    scores = PriorScores(queries, candidates, weights, prior, row)
    expected = queries @ candidates.T + weights[:, None] * prior[row]
    np.testing.assert_allclose(scores[1:4], expected[1:4], rtol=1e-5)
    assert scores.shape == (5, 7)


@pytest.mark.parametrize("budget", [10 ** 6, 29])
def test_request_buckets_start_at_or_before_their_requests(budget):
    times = np.array([0.5, 0.7, 3.2, 10.1, 10.9]) * DAY
    starts, bucket = request_buckets(times, 5, num_items=10, default=0.0, budget=budget)
    assert (starts[bucket] <= times).all()
    assert len(starts) * 10 <= budget or len(starts) == 1
    if budget > 100:
        np.testing.assert_array_equal(starts, np.array([0.0, 3.0, 10.0]) * DAY)
    else:  # 3 days x 10 items is over the budget: coarser buckets than a day
        assert len(starts) < 3
    none_starts, none_bucket = request_buckets(None, 3, 10, default=42.0)
    assert none_starts.tolist() == [42.0] and none_bucket.tolist() == [0, 0, 0]


def test_query_weights_follow_the_history():
    settings = PriorSettings(7.0, 0.1, 0.4, 0.5)
    np.testing.assert_allclose(settings.query_weights(np.array([True, False])), [0.1, 0.4])


@pytest.mark.parametrize("weights, scale", [((0.09, 0.4), 0.3), ((0.0, 0.25), 0.5)])
def test_the_served_column_is_scaled_on_both_ends_and_scores_the_same(weights, scale):
    settings = PriorSettings(7.0, *weights, 0.5)
    assert settings.column_scale == pytest.approx(scale)
    with_history, without = settings.served_weights()
    log_prior = np.array([-14.0, -9.0, -11.5])
    # What a served dot product adds: the query's end times the candidate's.
    np.testing.assert_allclose([with_history * scale * log_prior, without * scale * log_prior],
                               [weights[0] * log_prior, weights[1] * log_prior])


def test_calibration_without_a_validation_split_says_so_and_keeps_the_config(pipeline_log):
    from types import SimpleNamespace

    from towerrec.config import load_config
    from towerrec.training.calibrate import choose

    prior_config = load_config(None).prior
    validation = SimpleNamespace(splits={"train": None, "warm": [], "cold_item": [1]})
    settings = choose(validation, prior_config)
    assert settings == PriorSettings.from_config(prior_config)
    assert not settings.chosen["calibrated"]
    assert "no validation split to choose it on" in pipeline_log.text


def test_a_subset_of_queries_keeps_every_field_in_step():
    from towerrec.data.features import Queries
    from towerrec.training.calibrate import _subset

    queries = Queries(np.array(["a", "", "c"], dtype=object),
                      np.array([["1"], [""], ["3"]], dtype=object),
                      np.array(["x", "y", "z"], dtype=object),
                      [np.array([1]), np.array([2]), np.array([3])],
                      [np.array([], np.int64), np.array([5]), np.array([6])],
                      np.array([10.0, 20.0, 30.0]))
    part = _subset(queries, np.array([True, False, True]))
    assert part.user_id.tolist() == ["a", "c"] and part.history.tolist() == [["1"], ["3"]]
    assert [t.tolist() for t in part.targets] == [[1], [3]]
    assert [e.tolist() for e in part.exclude] == [[], [6]]
    assert part.time.tolist() == [10.0, 30.0] and part.context_text.tolist() == ["x", "z"]
