"""The synthetic catalogue: seeded, sharded, and with the structure a model can learn."""
from __future__ import annotations

import json

from towerrec.config import ConfigError, load_config
from towerrec.data import synthetic
from towerrec.data.sources import load_dataset
from towerrec.data.synthetic import SIZES, generate
from towerrec.pipelines.cli import main

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest


def read(directory):
    """(items, interactions) frames, every shard in order."""
    return tuple(pq.read_table(directory / part).to_pandas()
                 for part in ("items", "interactions"))


def schema(folder) -> dict:
    types = pq.read_schema(folder / "part-00000.parquet")
    return dict(zip(types.names, map(str, types.types)))


@pytest.fixture(scope="module")
def xs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthetic") / "xs"
    generate(directory, "XS", seed=0)
    return directory


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Size S (100k interactions): enough for the statistics below, generated in ~1 s."""
    directory = tmp_path_factory.mktemp("synthetic") / "s"
    generate(directory, "S", seed=0)
    return read(directory)


def test_same_seed_same_data_whatever_the_shards(xs, tmp_path):
    generate(tmp_path / "again", "XS", seed=0, shard_rows=400)
    assert len(list((tmp_path / "again" / "items").iterdir())) == 3
    assert len(list((tmp_path / "again" / "interactions").iterdir())) == 25
    assert max(pq.read_metadata(f).num_rows
               for f in (tmp_path / "again" / "interactions").iterdir()) == 400
    for first, second in zip(read(xs), read(tmp_path / "again")):
        pd.testing.assert_frame_equal(first, second)
    generate(tmp_path / "other", "XS", seed=1)
    for first, second in zip(read(xs), read(tmp_path / "other")):
        assert not first.equals(second)


def test_counts_schema_and_metadata(xs):
    items, inter = read(xs)
    n_items, n_interactions, n_users = SIZES["XS"]
    assert (len(items), len(inter), inter["user_id"].nunique()) == SIZES["XS"]
    assert json.loads((xs / "synthetic.json").read_text()) == {
        "generator_version": synthetic.VERSION, "size": "XS", "seed": 0, "items": n_items,
        "interactions": n_interactions, "users": n_users, "topics": 34, "item_shards": 1,
        "interaction_shards": 1}
    assert schema(xs / "items") == {"item_id": "string", "title": "string",
                                    "categories": "string", "price": "double",
                                    "topic": "int32"}
    assert schema(xs / "interactions") == {"user_id": "string", "item_id": "string",
                                           "timestamp": "int64", "context_text": "string"}
    assert items["item_id"].is_unique and items["item_id"].str.fullmatch(r"i\d{7}").all()
    assert inter["user_id"].str.fullmatch(r"u\d{7}").all()
    assert items["title"].str.split().str.len().between(4, 6).all()
    assert items["title"].nunique() > 0.99 * len(items)
    categories = items["categories"].str.split("|")
    assert categories.str.len().between(1, 3).all()
    assert (categories.map(lambda c: len(set(c))) == categories.str.len()).all()
    assert 0.01 < items["price"].isna().mean() < 0.06 and (items["price"].dropna() > 0).all()
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert inter.groupby("user_id").size().min() >= 5


def test_titles_carry_topic_signal(small):
    items, inter = small
    words = dict(zip(items["item_id"], items["title"].str.split().map(set)))
    rng = np.random.default_rng(0)
    same_user = inter["user_id"].to_numpy()[1:] == inter["user_id"].to_numpy()[:-1]
    ids = inter["item_id"].to_numpy()
    consecutive = list(zip(ids[:-1][same_user], ids[1:][same_user]))[:20_000]
    catalogue = items["item_id"].to_numpy()
    shuffled = list(zip(rng.choice(catalogue, 20_000), rng.choice(catalogue, 20_000)))

    def sharing(pairs):
        return np.mean([bool(words[a] & words[b]) for a, b in pairs])

    assert sharing(consecutive) > 3 * sharing(shuffled)


def test_context_names_the_users_topic(small):
    items, inter = small
    named = inter["context_text"].str.extract(r"^(?:looking for|in the mood for) (\w+),")[0]
    assert 0.4 < named.notna().mean() < 0.6
    titles = inter["item_id"].map(dict(zip(items["item_id"], items["title"])))
    hit = [word in title.split() for word, title in zip(named.dropna(),
                                                        titles[named.notna()])]
    shuffled = [word in title.split() for word, title in zip(
        named.dropna(), titles[named.notna()].sample(frac=1, random_state=0))]
    assert np.mean(hit) > 3 * np.mean(shuffled)


def test_popularity_is_skewed(small):
    items, inter = small
    counts = inter["item_id"].value_counts()
    assert counts.iloc[:len(items) // 100].sum() > 0.1 * len(inter)
    assert inter.duplicated(["user_id", "item_id"]).mean() < 0.01


def test_distinct_contexts_stay_bounded(small):
    _, inter = small
    assert inter["context_text"].nunique() <= 8 * (2 * synthetic.topics_for(10_000) + 4)
    assert 8 * (2 * synthetic.topics_for(SIZES["L"][0]) + 4) < 4_000


def test_timestamps_increase_per_user_and_users_start_apart(small):
    _, inter = small
    assert (inter.groupby("user_id", sort=False)["timestamp"].diff().dropna() >= 0).all()
    first = inter.groupby("user_id")["timestamp"].min()
    assert first.std() > 100 * 86_400
    span = inter["timestamp"].max() - inter["timestamp"].min()
    assert 365 * 86_400 < span <= 2 * 365 * 86_400


def test_preferences_drift(small):
    items, inter = small
    inter = inter.assign(topic=inter["item_id"].map(dict(zip(items["item_id"],
                                                             items["topic"]))))
    sizes = inter.groupby("user_id", sort=False)["topic"].transform("size")
    inter = inter[sizes >= 12]
    position = inter.groupby("user_id", sort=False).cumcount()
    inter = inter.assign(quarter=4 * position // sizes[inter.index])
    shares = (inter.groupby(["user_id", "quarter"])["topic"].value_counts(normalize=True)
              .unstack("quarter", fill_value=0.0))

    def distance(a, b):  # total variation, mean over users
        return (shares[a] - shares[b]).abs().groupby("user_id").sum().mean() / 2

    assert distance(0, 3) > distance(1, 2) + 0.1


def test_load_dataset_generates_once_then_reads(tmp_path, pipeline_log):
    config = load_config(None, {"data.source": "synthetic", "data.size": "XS",
                                "data.path": str(tmp_path / "data"),
                                "run_dir": str(tmp_path / "run")})
    dataset = load_dataset(config)
    assert "generating the synthetic catalogue XS" in pipeline_log.text
    pipeline_log.clear()
    again = load_dataset(config)
    assert "generating" not in pipeline_log.text
    pd.testing.assert_frame_equal(dataset.items, again.items)
    assert list(dataset.items.columns) == ["item_id", "title", "text", "categories", "price"]
    assert list(dataset.interactions.columns) == ["user_id", "item_id", "timestamp", "rating",
                                                  "context_text"]
    assert (dataset.categorical_columns, dataset.numeric_columns) == (["categories"],
                                                                      ["price"])
    assert len(dataset.interactions) == SIZES["XS"][1]
    other_seed = load_config(None, {"data.source": "synthetic", "data.size": "XS",
                                    "data.synthetic_seed": 1,
                                    "data.path": str(tmp_path / "data")})
    with pytest.raises(FileExistsError, match="holds size XS seed 0"):
        load_dataset(other_seed)


def test_custom_size_and_config_errors(tmp_path):
    config = load_config(None, {"data.source": "synthetic", "data.size": "custom",
                                "data.synthetic_items": 60, "data.synthetic_interactions": 90,
                                "data.synthetic_users": 30, "data.path": str(tmp_path)})
    dataset = load_dataset(config)
    assert (len(dataset.items), len(dataset.interactions),
            dataset.interactions["user_id"].nunique()) == (60, 90, 30)
    with pytest.raises(ConfigError, match=r"data.size: 'XL' is not one of XS, S, M, L, custom"):
        load_config(None, {"data.size": "XL"})
    with pytest.raises(ConfigError, match="counts go with size custom"):
        load_dataset(load_config(None, {"data.source": "synthetic", "data.size": "XS",
                                        "data.synthetic_items": 5}))


def test_cli_writes_and_refuses_with_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["synth", "--size", "XS", "--seed", "3", "--out", str(out)]) == 0
    assert "1,000 items (1 shard(s)), 10,000 interactions" in capsys.readouterr().out
    assert main(["synth", "--size", "XS", "--seed", "3", "--out", str(out)]) == 0  # a rerun
    capsys.readouterr()
    for bad, message in [
            (["--size", "XL"], "synthetic size 'XL' is not one of XS, S, M, L, custom"),
            (["--size", "custom", "--items", "10", "--interactions", "0", "--users", "2"],
             "needs positive items, interactions and users"),
            (["--size", "XS", "--seed", "4"], "is not a synthetic catalogue of size XS seed 4 "
             "(it holds size XS seed 3)")]:
        assert main(["synth", "--out", str(out), *bad]) == 2
        error = capsys.readouterr().err
        assert error.startswith("towerrec synth: error: ") and message in error
        assert error.count("\n") == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["synth", "--size", "XS", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
