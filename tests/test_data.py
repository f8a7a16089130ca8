"""Data sources and validation: clear errors before any training starts."""
from __future__ import annotations

import re

from towerrec.config import ConfigError, load_config
from towerrec.data.dataset import DataError, id_column
from towerrec.data.movielens import load_movielens_100k
from towerrec.data.sources import load_dataset
from towerrec.pipelines.cli import main

import pandas as pd
import pytest

ITEMS = pd.DataFrame({"item_id": ["a", "b", "c"],
                      "title": ["Alien", "Heat", "Up"],
                      "genres": ["Horror|Sci-Fi", "Crime", "Animation"],
                      "year": [1979, 1995, 2009]})
INTERACTIONS = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "c"],
                             "timestamp": [1, 2, 3]})


def config_for(tmp_path, interactions=INTERACTIONS, items=ITEMS, fmt="csv", **data):
    paths = {}
    for name, frame in (("interactions", interactions), ("items", items)):
        path = tmp_path / f"{name}.{fmt}"
        if isinstance(frame, str):
            path.write_text(frame)
        elif fmt == "parquet":
            frame.to_parquet(path)
        else:
            frame.to_csv(path, index=False)
        paths[name] = str(path)
    values = {"data.source": fmt, "data.interactions": paths["interactions"],
              "data.items": paths["items"], "data.categorical_columns": ["genres"],
              "data.numeric_columns": ["year"], "run_dir": str(tmp_path / "run")}
    values.update({f"data.{k}": v for k, v in data.items()})
    return load_config(None, values)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generic_source_reads_typed_frames(tmp_path, fmt):
    dataset = load_dataset(config_for(tmp_path, fmt=fmt))
    assert list(dataset.interactions["item_id"]) == ["a", "b", "c"]
    assert dataset.interactions["timestamp"].dtype == "int64"
    assert dataset.items.set_index("item_id").loc["a", "genres"] == "Horror|Sci-Fi"
    assert dataset.items["year"].dtype == "float64"


def test_missing_column_is_named(tmp_path):
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        load_dataset(config_for(tmp_path, INTERACTIONS.drop(columns="timestamp")))
    with pytest.raises(DataError, match=r"items file .* missing column\(s\) \['genres'\]"):
        load_dataset(config_for(tmp_path, items=ITEMS.drop(columns="genres")))


def test_wrong_type_is_named(tmp_path):
    items = ITEMS.assign(year=["1979", "soon", "2009"])
    with pytest.raises(DataError,
                       match=r"items.csv: column 'year' must be a number; row 1 has 'soon'"):
        load_dataset(config_for(tmp_path, items=items))
    inter = INTERACTIONS.assign(timestamp=["1", "yesterday-ish", "3"])
    with pytest.raises(DataError, match=r"'timestamp' must be a number or a date"):
        load_dataset(config_for(tmp_path, inter))


def test_unknown_item_in_interactions(tmp_path):
    inter = pd.concat([INTERACTIONS, pd.DataFrame(
        {"user_id": ["u3"], "item_id": ["zz"], "timestamp": [4]})])
    with pytest.raises(DataError, match=r"not in the items file, e\.g\. \['zz'\]"):
        load_dataset(config_for(tmp_path, inter))


def test_empty_files(tmp_path):
    with pytest.raises(DataError, match="interactions file is empty"):
        load_dataset(config_for(tmp_path, ""))
    with pytest.raises(DataError, match="items file has no rows"):
        load_dataset(config_for(tmp_path, items="item_id,title,genres,year\n"))


def test_unknown_config_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_config(None, {"training.epoch": 3})


@pytest.mark.parametrize("key, value, message", [
    ("retrain.tolerance", "5%", "retrain.tolerance: expected float, got '5%'"),
    ("training.epochs", True, "training.epochs: expected int, got True"),
    ("retrain.gate_splits", "warm", "gate_splits: expected a list of str"),
    ("evaluation.ks", [5, 20], "must include 10 and 100"),
    # What a hostile probe found accepted (issue 14, 13): types and ranges, finite floats.
    ("split.cold_user_fraction", 7, "split.cold_user_fraction: 7.0 is out of range"),
    ("data.min_rating", "high", "data.min_rating: expected float or null, got 'high'"),
    ("data.rating_column", 5, "data.rating_column: expected str or null, got 5"),
    ("split.test_files", ["a"], "split.test_files: expected a mapping of str to str"),
    ("training.learning_rate", float("nan"), "learning_rate: nan is not a finite number"),
    ("training.temperature", 0, "temperature: 0.0 is out of range (must be > 0.0)"),
    ("training.batch_size", 0, "training.batch_size: 0 is out of range (must be >= 2)"),
    ("training.epochs", -3, "training.epochs: -3 is out of range (must be >= 1)"),
    ("towers.embedding_dim", 0, "towers.embedding_dim: 0 is out of range"),
    ("name.x", 1, "config.name: expected str"),
    ("evaluation.max_users", True, "max_users: expected int or null, got True"),
])
def test_config_values_are_typed(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {key: value})
    assert load_config(None, {"retrain.tolerance": 1}).retrain.tolerance == 1.0


@pytest.mark.parametrize("text, message", [
    ("training: [unclosed", "while parsing"),
    (None, "Is a directory"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not UTF-8 text"),
    ("- one\n- two\n", "expected a mapping of sections, got list"),
])
def test_cli_reports_a_bad_config_file_without_traceback(tmp_path, capsys, text, message):
    path = tmp_path / "config.yaml"
    if text is None:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("towerrec train: error:") and message in error
    assert "Traceback" not in error


def test_an_empty_timestamp_is_a_data_error(tmp_path):
    inter = INTERACTIONS.astype({"timestamp": float})
    inter.loc[1, "timestamp"] = float("nan")
    with pytest.raises(DataError, match="'timestamp' is empty in row 1"):
        load_dataset(config_for(tmp_path, inter))


def test_cli_reports_bad_data_without_traceback(tmp_path, capsys):
    config = config_for(tmp_path, INTERACTIONS.drop(columns="user_id"))
    path = tmp_path / "config.yaml"
    from towerrec.config import to_dict

    import yaml
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['user_id']" in err and "Traceback" not in err


def test_movielens_from_recbole_wheel(movielens):
    assert len(movielens.interactions) == 100_000
    assert movielens.interactions["user_id"].nunique() == 943
    assert len(movielens.items) == 1682
    first = movielens.interactions.iloc[0]
    assert first["context_text"] == "a 49 year old man, writer, Thursday afternoon"
    toy_story = movielens.items.set_index("item_id").loc["1"]
    assert toy_story["text"] == "Toy Story (1995). Animation, Children's, Comedy"
    assert toy_story["title"] == "Toy Story (1995)"


def test_movielens_from_grouplens_folder(movielens, tmp_path):
    """The GroupLens layout (u.data, u.item, u.user) gives the same dataset."""
    inter = movielens.interactions
    (tmp_path / "u.data").write_text("".join(
        f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in
        zip(inter.user_id, inter.item_id, inter.rating, inter.timestamp)))
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
              "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
              "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    items = movielens.items
    lines = []
    for item_id, text, item_genres, year in zip(items.item_id, items.text, items.genres,
                                                 items.year):
        title = text.rsplit(". ", 1)[0]
        date = f"01-Jan-{int(year)}" if year == year else ""
        flags = "|".join("1" if g in item_genres.split("|") else "0" for g in genres)
        lines.append(f"{item_id}|{title}|{date}||http://x|{flags}\n")
    (tmp_path / "u.item").write_text("".join(lines), encoding="latin-1")
    import io

    from towerrec.data.movielens import _read_files
    users = pd.read_csv(io.BytesIO(_read_files("")["ml-100k.user"]), sep="\t", dtype=str)
    (tmp_path / "u.user").write_text("".join("|".join(row) + "\n" for row in users.values))
    grouplens = load_movielens_100k(str(tmp_path))
    pd.testing.assert_frame_equal(grouplens.interactions, movielens.interactions)
    dated = movielens.items["year"].notna()  # the test writes no date where year is unknown
    pd.testing.assert_series_equal(grouplens.items["text"][dated], movielens.items["text"][dated])


@pytest.mark.parametrize("setting, message", [
    ("training.batch_size=0", "training.batch_size: 0 is out of range"),
    ("towers.embedding_dim=0", "towers.embedding_dim: 0 is out of range"),
    ("training.learning_rate=.nan", "training.learning_rate: nan is not a finite number"),
    ("training.learning_rate=1" + "0" * 400, "training.learning_rate: 1000"),
    ("name.x=1", "config.name: expected str"),
    ("training=[1, 2]", "config.training: expected a mapping, got [1, 2]"),
    ("training.epochs.x=1", "--set training.epochs.x: 'training.epochs' is a value"),
])
def test_cli_refuses_bad_settings_in_one_line(tmp_path, capsys, setting, message):
    config = tmp_path / "config.yaml"
    config.write_text("training:\n  epochs: 2\n")
    assert main(["train", "--config", str(config), "--set", setting]) == 2
    error = capsys.readouterr().err
    assert error.startswith("towerrec train: error:") and message in error, error
    assert len(error.strip().splitlines()) == 1


def test_a_setting_goes_into_a_section_left_empty_in_the_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("training:\n")
    assert load_config(str(config), {"training.epochs": 3}).training.epochs == 3


def test_a_huge_text_cell_is_cut_when_read(tmp_path):
    from towerrec.data.dataset import MAX_TEXT_CHARS
    items = ITEMS.assign(title=["x" * 400_000, "b", "c"])
    inter = INTERACTIONS.assign(context=["y" * 50_000, "", "z"])
    dataset = load_dataset(config_for(tmp_path, inter, items, context_column="context"))
    assert dataset.items["title"].str.len().max() == MAX_TEXT_CHARS
    assert dataset.items["text"].str.len().max() <= MAX_TEXT_CHARS
    assert dataset.interactions["context_text"].str.len().max() == MAX_TEXT_CHARS


def test_ids_stay_as_written_when_a_cell_is_blank(tmp_path):
    """A blank id cell is an error naming the row, and never turns 90031 into '90031.0'."""
    items = ITEMS.assign(item_id=["90031", "", "c"])
    with pytest.raises(DataError, match=r"items.csv: row 1 has an empty item_id"):
        load_dataset(config_for(tmp_path, items=items))
    inter = INTERACTIONS.assign(user_id=["u1", "", "u2"])
    with pytest.raises(DataError, match=r"interactions.csv: row 1 has an empty user_id"):
        load_dataset(config_for(tmp_path, inter))
    items = ITEMS.assign(item_id=["90031", "b", "c"])
    inter = INTERACTIONS.assign(item_id=["90031", "b", "c"])
    dataset = load_dataset(config_for(tmp_path, inter, items, fmt="parquet"))
    assert list(dataset.items["item_id"]) == ["90031", "b", "c"]
    # A typed file's int column that pandas holds as floats (it had a gap somewhere).
    assert id_column(pd.DataFrame({"i": [90031.0, 7.0]}), "i", "items").tolist() == [
        "90031", "7"]


def test_new_interactions_with_an_empty_user_id_are_refused(tmp_path):
    """retrain reads them before it writes anything (a real NaN once passed the check)."""
    from towerrec.pipelines.retrain import read_new_interactions
    path = tmp_path / "new.csv"
    pd.DataFrame({"user_id": ["1", ""], "item_id": ["50", "181"], "timestamp": [1, 2],
                  "rating": [5, 4],
                  "context_text": ["", ""]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"new.csv: row 1 has an empty user_id"):
        read_new_interactions(str(path), load_config(None, {}))
