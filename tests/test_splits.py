"""Split invariants on real MovieLens-100K."""
from __future__ import annotations

from towerrec.config import load_config
from towerrec.data.splits import (
    future_split,
    get_splits,
    load_splits,
    make_splits,
    validation_splits,
)

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def splits(movielens):
    return make_splits(movielens, load_config(None))


def test_every_interaction_lands_in_exactly_one_split(splits, movielens):
    assert sum(len(f) for f in splits.values()) == len(movielens.interactions)


def test_no_cold_user_in_train(splits):
    cold = set(splits["cold_user"]["user_id"])
    assert 80 <= len(cold) <= 110  # about 10% of 943
    assert not cold & set(splits["train"]["user_id"])
    assert not cold & set(splits["warm"]["user_id"])
    assert not cold & set(splits["cold_item"]["user_id"])


def test_no_cold_item_in_train(splits):
    cold = set(splits["cold_item"]["item_id"])
    assert cold
    assert not cold & set(splits["train"]["item_id"])
    assert not cold & set(splits["warm"]["item_id"])


def test_warm_split_is_temporal_per_user(splits):
    last_train = splits["train"].groupby("user_id")["timestamp"].max()
    first_test = splits["warm"].groupby("user_id")["timestamp"].min()
    both = pd.concat([last_train, first_test], axis=1, join="inner")
    assert len(both) > 800
    assert (both.iloc[:, 0] <= both.iloc[:, 1]).all()
    assert set(splits["warm"]["user_id"]) <= set(splits["train"]["user_id"])


def test_splits_are_seeded(movielens, splits):
    again = make_splits(movielens, load_config(None))
    for name in splits:
        pd.testing.assert_frame_equal(splits[name], again[name])
    other = make_splits(movielens, load_config(None, {"split.seed": 1}))
    assert set(other["cold_user"]["user_id"]) != set(splits["cold_user"]["user_id"])


def test_splits_are_saved_and_reused(movielens, tmp_path):
    config = load_config(None, {"run_dir": str(tmp_path)})
    first = get_splits(movielens, config)
    assert (tmp_path / "splits" / "summary.json").exists()
    reloaded = load_splits(tmp_path / "splits")
    for name in first:
        pd.testing.assert_frame_equal(first[name], reloaded[name])


def test_explicit_train_and_test_files(movielens, splits, tmp_path):
    splits["train"].to_csv(tmp_path / "train.csv", index=False)
    splits["warm"].to_csv(tmp_path / "test.csv", index=False)
    config = load_config(None, {"run_dir": str(tmp_path / "run"),
                                "split.train_file": str(tmp_path / "train.csv"),
                                "split.test_files": {"mine": str(tmp_path / "test.csv")}})
    given = make_splits(movielens, config)
    assert set(given) == {"train", "mine"}
    assert len(given["mine"]) == len(splits["warm"])
    for name in given:  # typed as the interactions are, not as the CSV's text
        for column in ("user_id", "item_id", "timestamp", "context_text"):
            assert given[name][column].dtype == movielens.interactions[column].dtype, column
        pd.testing.assert_series_equal(given[name]["timestamp"],
                                       splits[name if name == "train" else "warm"]["timestamp"],
                                       check_names=False)


@pytest.fixture(scope="module")
def future(movielens):
    return make_splits(movielens, load_config(None, {"split.protocol": "future"}))


def test_the_future_split_trains_on_nothing_after_the_cut(future, movielens):
    train, test = future["train"], future["future"]
    assert set(future) == {"train", "future"}
    assert len(train) == len(movielens.interactions) - int(len(movielens.interactions) * 0.2)
    assert train["timestamp"].max() <= test["timestamp"].min()
    # Every interaction after the cut is in the test, unless its user or item is new there.
    after = len(movielens.interactions) - len(train)
    assert 0 < len(test) <= after


def test_the_future_split_tests_only_users_and_items_seen_before_the_cut(future):
    train, test = future["train"], future["future"]
    assert set(test["user_id"]) <= set(train["user_id"])
    assert set(test["item_id"]) <= set(train["item_id"])
    assert 50 <= test["user_id"].nunique() <= 300  # about a hundred on MovieLens-100K


def test_the_future_cut_breaks_ties_in_time_the_same_way_every_time(movielens):
    shuffled = movielens.interactions.sample(frac=1.0, random_state=3)
    tied = shuffled.assign(timestamp=shuffled["timestamp"] // 10**6)  # many equal times
    first = future_split(tied, 0.2)
    again = future_split(tied.sample(frac=1.0, random_state=4), 0.2)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])


def test_validation_is_carved_from_training_as_the_test_was(future, splits):
    carved = validation_splits(future["train"], load_config(
        None, {"split.protocol": "future"}).split)
    assert set(carved) == {"train", "future"}
    assert carved["train"]["timestamp"].max() <= carved["future"]["timestamp"].min()
    assert carved["future"]["timestamp"].max() <= future["train"]["timestamp"].max()
    per_user = validation_splits(splits["train"], load_config(None).split)
    assert set(per_user) == {"train", "warm", "cold_item", "cold_user"}
    assert sum(len(f) for f in per_user.values()) == len(splits["train"])


def test_an_unknown_protocol_is_refused():
    from towerrec.config import ConfigError
    with pytest.raises(ConfigError, match="split.protocol: 'tomorrow' is not one of"):
        load_config(None, {"split.protocol": "tomorrow"})


def test_a_future_query_is_the_history_before_the_cut_and_the_first_context_after(future):
    from towerrec.data.features import evaluation_queries
    train, test = future["train"], future["future"]
    user = test["user_id"].iloc[0]
    catalogue = np.array(sorted(set(train["item_id"]) | set(test["item_id"])), dtype=object)
    queries = evaluation_queries(test[test["user_id"] == user], train, catalogue, 20,
                                 known_users=True)
    before = train[train["user_id"] == user].sort_values("timestamp", kind="stable")
    after = test[test["user_id"] == user].sort_values("timestamp", kind="stable")
    assert list(queries.user_id) == [user]
    assert [h for h in queries.history[0] if h] == list(before["item_id"])[-20:]
    assert queries.context_text[0] == after["context_text"].iloc[0]
    assert sorted(catalogue[queries.targets[0]]) == sorted(after["item_id"])
