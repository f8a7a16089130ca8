"""Retrain: new data in, a warm-started model, a gate, a publish that a server picks up;
a worse model is refused; bad data stops before training; SIGKILL loses nothing."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import load_config, to_dict
from towerrec.data.dataset import Dataset
from towerrec.data.features import Indexed
from towerrec.export.export import export_models
from towerrec.export.publish import (
    MODELS,
    PROVENANCE,
    PUBLISH_JOURNAL,
    next_version,
    publish,
    versions,
)
from towerrec.pipelines.cli import main
from towerrec.pipelines.retrain import GENERATIONS, gate, retrain
from towerrec.testing import csv_config_values, write_time_split
from towerrec.training.train import train

import numpy as np
import pandas as pd
import pytest
import yaml

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

STAR_WARS_FANS_ALSO = ["50", "172", "181"]  # Star Wars, Empire, Return of the Jedi
PHANTOM = "new-phantom-menace"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(movielens, tmp_path_factory):
    """300 users' MovieLens, the latest 10% as new data, plus a new item that the new
    interactions of every Star Wars fan name."""
    inter = movielens.interactions[movielens.interactions["user_id"].astype(int) <= 300]
    folder = tmp_path_factory.mktemp("retrain_data")
    paths = write_time_split(Dataset(inter, movielens.items, ["genres"], ["year"]), folder)
    new_items = pd.read_csv(paths["new_items"], dtype={"item_id": str})
    new_items.loc[len(new_items)] = [PHANTOM, "Star Wars: Episode I (1999)",
                                     "Action, Adventure, Sci-Fi", "Action|Adventure|Sci-Fi",
                                     1999]
    new_items.to_csv(paths["new_items"], index=False)
    fans = sorted(set(inter.loc[inter["item_id"] == "50", "user_id"]))
    new = pd.read_csv(paths["new_interactions"])
    extra = pd.DataFrame({"user_id": fans, "item_id": PHANTOM,
                          "timestamp": new["timestamp"].max() - 1, "rating": 5.0,
                          "context_text": "Friday evening"})
    pd.concat([new, extra]).to_csv(paths["new_interactions"], index=False)
    return paths


def _config(paths, run_dir: Path, **overrides):
    # The mean history (as slice_config): in 2 epochs on this data the attention towers
    # learn too little for the gate to tell a shuffled-label retrain from the published
    # model (both ride the item prior: warm Recall@10 0.068 against 0.065).
    return load_config(None, {**csv_config_values(paths), "run_dir": str(run_dir),
                              "encoder.sequence_length": 32, "training.epochs": 2,
                              "retrain.epochs": 2, "retrain.tolerance": 0.3,
                              "towers.history_encoder": "mean", **overrides})


@pytest.fixture(scope="module")
def trained(tiny_encoder_dir, data, tmp_path_factory):
    """A run trained on the old data and its exports (every model but the ranker's)."""
    folder = tmp_path_factory.mktemp("retrain_published")
    (folder / "run").mkdir()
    (folder / "run" / "encoder").symlink_to(tiny_encoder_dir)
    config = _config(data, folder / "run")
    export_models(train(config, verbose=0), folder / "models", k=100)
    return folder / "models"


@pytest.fixture
def published(trained, data, tmp_path):
    """(config, model base path, config file) of this test's own copy of the exports,
    whose versions name the trained run as their source."""
    shutil.copytree(trained, tmp_path / "models")
    config = _config(data, tmp_path / "run")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    return config, tmp_path / "models", config_path


def _newest(base: Path):
    return {name: max(versions(base / name), default=None) for name in MODELS
            if (base / name).exists()}


def _version_folders(base: Path):
    return [base / m / str(v) for m in MODELS if (base / m).exists()
            for v in versions(base / m)]


def _load_every_version(base: Path):
    """Loads every version under `base` in a fresh process (fails if one does not load)."""
    code = ("import sys, pathlib, tensorflow as tf, tensorflow_text, scann\n"
            "for d in sys.argv[1:]: tf.saved_model.load(d).signatures['serving_default']\n")
    subprocess.run([sys.executable, "-c", code, *map(str, _version_folders(base))],
                   check=True, cwd=REPO)


def _contents(folders):
    """{file: sha1 of its bytes} of every file under `folders`."""
    return {path: hashlib.sha1(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def test_retrain_publishes_and_the_server_serves_new_items(published, data):
    from towerrec.serving.client import RecommenderClient
    from towerrec.serving.server import serve

    from tests.serving_helpers import wait_for

    config, base, config_path = published
    with serve(model_base_path=str(base), grpc_port=0, rest_port=-1,
               file_system_poll_wait_seconds=0.2) as server, \
            RecommenderClient(f"127.0.0.1:{server.grpc_port}") as client:
        request = {"user_id": [""], "history": [STAR_WARS_FANS_ALSO],
                   "context_text": ["Friday evening"]}
        assert client.predict("retrieval_brute_force", request).version == 1

        result = retrain(config, str(data["new_interactions"]), str(data["new_items"]),
                         base, verbose=0)
        assert set(result.published) == {"query_tower", "candidate_tower",
                                            "retrieval_brute_force", "retrieval_scann"}
        assert set(_newest(base).values()) == {2}
        assert "published" in result.metrics  # the gate compared with version 1
        wait_for(lambda: client.predict("retrieval_brute_force", request).version == 2,
                 what="the server to serve version 2")
        answer = client.predict("retrieval_brute_force", request)
    found = [i.decode() if isinstance(i, bytes) else i for i in answer["item_ids"][0]]
    assert PHANTOM in found, "the new item is not retrieved for Star Wars fans"
    generation = Path(result.generation)
    assert generation.parent == config.run_path / GENERATIONS
    assert (generation / "added_items.parquet").exists()

    # Given the base path, `towerrec evaluate` and `towerrec export` with the same config act
    # on the served generation, not on the run the config names, which predates it.
    assert main(["evaluate", "--config", str(config_path), "--model-base-path", str(base)]) == 0
    assert (generation / "evaluation.json").exists()
    assert main(["export", "--config", str(config_path), "--model-base-path", str(base)]) == 0
    assert set(_newest(base).values()) == {3}
    assert _provenance(base / "query_tower" / "3") == str(generation.resolve())

    # Rollback: the previous version is the newest again, the rolled-back one kept aside,
    # and its number is not given to the next version.
    assert main(["rollback", "all", "--model-base-path", str(base)]) == 0
    assert set(_newest(base).values()) == {2}
    assert list((base / "query_tower").glob(".rolled-back-3-*"))
    assert next_version(base / "query_tower") == 4


def test_gate_refuses_a_worse_model_and_publishes_nothing(published, data, monkeypatch):
    import towerrec.training.train as train_module

    config, base, _ = published
    features = train_module.training_features

    def shuffled_labels(run):
        """Every example's item (its catalogue columns and probability) from another."""
        examples = features(run)
        order = np.random.default_rng(0).permutation(len(examples["item_id"]))
        examples["item_probability"] = examples["item_probability"][order]
        for name in run.catalogue:
            examples[name] = Indexed(examples[name].values, examples[name].index[order])
        return examples

    monkeypatch.setattr(train_module, "training_features", shuffled_labels)
    before = _newest(base)
    config = dataclasses.replace(config, retrain=dataclasses.replace(
        config.retrain, epochs=4, tolerance=0.1))
    result = retrain(config, str(data["new_interactions"]), str(data["new_items"]), base,
                     verbose=0)
    assert result.published == {}, result.metrics
    # warm (~250 users) is a steady judge; recent (~45 users here) is noisy.
    published = result.metrics["published"]["warm"]["ndcg_at_10"]
    assert result.metrics["retrained"]["warm"]["ndcg_at_10"] < 0.9 * published
    assert _newest(base) == before
    assert not list(base.glob("*/.tmp-*"))


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("user_id,item_id,timestamp,rating,context_text,extra\n1,50,1,5,x,y\n",
     "unknown column(s) ['extra']"),
    ("user_id,item_id,rating,context_text\n1,50,5,x\n", "missing column(s) ['timestamp']"),
    ("user_id,item_id,timestamp,rating,context_text\n1,50,yesterday-ish,5,x\n",
     "must be a number or a date"),
    ("user_id,item_id,timestamp,rating,context_text\n1,no-such-item,1,5,x\n",
     "not in the catalogue"),
])
def test_bad_new_data_stops_before_training(published, tmp_path, capsys, content,
                                            message):
    _, base, config_path = published
    before = _newest(base)
    bad = tmp_path / "new.csv"
    bad.write_text(content)
    code = main(["retrain", "--config", str(config_path), "--new-interactions", str(bad),
                 "--model-base-path", str(base)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / GENERATIONS).exists()
    assert _newest(base) == before


# `towerrec retrain` in a process that stops where a test asks (PAUSE_AT), says so, and
# waits there to be killed: inside model.fit ("fit"), once the first export version is
# staged ("staging"), or at a retrain stage by its name. The hooks are this test's.
PAUSING_RETRAIN = r"""
import os, sys, time
import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.export import export
from towerrec.pipelines import retrain
from towerrec.pipelines.cli import main
from towerrec.training import train

pause_at = os.environ.get("PAUSE_AT", "")


def pause(where):
    print(f"paused at {where}", flush=True)
    time.sleep(3600)


def after(owner, name, should_pause):
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        result = original(*args, **kwargs)
        if should_pause(*args, **kwargs):
            pause(pause_at)
        return result
    setattr(owner, name, patched)


if pause_at == "fit":  # after a few steps of the first epoch
    after(train._SteadyThroughput, "on_train_batch_end", lambda self, batch, logs=None: batch == 2)
elif pause_at == "staging":
    after(export, "stage_version", lambda *args, **kwargs: True)
elif pause_at:
    after(retrain, "at_stage", lambda name, started: name == pause_at)
sys.exit(main(sys.argv[1:]))
"""


def _retrain_process(config_path: Path, base: Path, data, pause_at: str = ""):
    env = dict(os.environ, PAUSE_AT=pause_at, PYTHONUNBUFFERED="1")
    items = ["--new-items", str(data["new_items"])] if data["new_items"] else []
    return subprocess.Popen(
        [sys.executable, "-c", PAUSING_RETRAIN, "retrain", "--config", str(config_path),
         "--new-interactions", str(data["new_interactions"]), *items,
         "--model-base-path", str(base)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when_paused(process, where: str) -> str:
    seen = []
    for out in process.stdout:
        seen.append(out)
        if out.strip() == f"paused at {where}":
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "".join(seen)
    raise AssertionError(f"retrain ended before pausing at '{where}':\n"
                         f"{''.join(seen)[-3000:]}")


def test_sigkill_at_any_stage_loses_nothing(published, data):
    _, base, config_path = published
    published = _version_folders(base)
    before = _contents(published)
    # Inside model.fit; while versions are being staged; between two publishing renames.
    for where in ("fit", "staging", "published query_tower"):
        _kill_when_paused(_retrain_process(config_path, base, data, where), where)
        assert _contents(published) == before, where  # byte for byte; all load at the end
    assert _newest(base)["query_tower"] == 2  # the publish that was cut short
    assert _newest(base)["candidate_tower"] == 1
    assert (base / PUBLISH_JOURNAL).exists()

    # The next retrain first finishes that publish (every model at version 2, from one
    # training), then publishes its own; the cut-short publish served the new data
    # already, so it brings more.
    more = pd.read_csv(data["new_interactions"], dtype={"item_id": str, "user_id": str})
    more["timestamp"] += 86400
    more_path = base.parent / "more.csv"
    more.to_csv(more_path, index=False)
    finished = _retrain_process(config_path, base, {"new_interactions": more_path,
                                                    "new_items": None})
    output, _ = finished.communicate(timeout=900)
    assert finished.returncode == 0, output[-3000:]
    assert "finished a publish that was cut short: candidate_tower 2" in output
    assert not list(base.glob("*/.tmp-*")) and not (base / PUBLISH_JOURNAL).exists()
    assert set(_newest(base).values()) == {3}
    for version in (2, 3):
        assert len({_provenance(base / name / str(version)) for name in _newest(base)}) == 1
    _load_every_version(base)

    # The previous generation's recent holdout is trained on by the next one.
    previous, latest = (Path(_provenance(base / "query_tower" / v)) for v in ("2", "3"))
    recent = pd.read_parquet(previous / "splits" / "recent.parquet")
    trained_on = pd.read_parquet(latest / "splits" / "train.parquet")
    key = ["user_id", "item_id", "timestamp"]
    assert len(recent) and len(recent[key].merge(trained_on[key])) == len(recent)


def _provenance(version_dir: Path) -> str:
    return json.loads((version_dir / PROVENANCE).read_text())["run_dir"]


def test_a_publish_cut_short_is_finished_by_the_next_rollback(tmp_path):
    staged = {}
    for name in ("query_tower", "candidate_tower"):
        for version in ("1", ".tmp-2"):
            (tmp_path / name / version).mkdir(parents=True)
        staged[name] = tmp_path / name / ".tmp-2"

    def killed(name):
        raise KeyboardInterrupt(f"killed after {name}")

    with pytest.raises(KeyboardInterrupt):
        publish(staged, after_each=killed)
    # The journal names the staged folders relative to the base path: a later command may
    # run from another working directory.
    assert set(json.loads((tmp_path / PUBLISH_JOURNAL).read_text()).values()) == {
        "query_tower/.tmp-2", "candidate_tower/.tmp-2"}
    assert _newest(tmp_path) == {"query_tower": 2, "candidate_tower": 1}
    # The rollback finishes the publish first, so every model goes back to the same
    # training (candidate_tower had no version 2 to roll back from otherwise).
    assert main(["rollback", "all", "--model-base-path", str(tmp_path)]) == 0
    assert _newest(tmp_path) == {"query_tower": 1, "candidate_tower": 1}
    assert not (tmp_path / PUBLISH_JOURNAL).exists()
    assert next_version(tmp_path / "query_tower") == 3
    assert sorted(p.name.split("-")[2] for p in tmp_path.glob("*/.rolled-back-*")) == ["2", "2"]


def test_rollback_all_moves_nothing_unless_every_model_can_go_back(tmp_path, capsys):
    for name, numbers in (("query_tower", "12"), ("recommender", "2")):
        for number in numbers:
            (tmp_path / name / number).mkdir(parents=True)
    assert main(["rollback", "all", "--model-base-path", str(tmp_path)]) == 2
    assert "recommender has only version 2" in capsys.readouterr().err
    assert _newest(tmp_path) == {"query_tower": 2, "recommender": 2}
    assert main(["rollback", "all", "--model-base-path", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()


def test_the_gate_refuses_when_no_split_can_judge(pipeline_log):
    published = {"warm": {"ndcg_at_10": 0.2, "recall_at_100": 0.5}}
    assert not gate({}, published, tolerance=0.05)
    assert "nothing tells the models apart" in pipeline_log.text
    assert gate({}, None, tolerance=0.05)  # nothing published yet: the first publish
