"""Shared fixtures: real MovieLens-100K, a tiny random BERT, a small real-data slice."""
from __future__ import annotations

import logging
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import load_config
from towerrec.data.movielens import load_movielens_100k
from towerrec.testing import tiny_bert
from towerrec.towers.text_encoder import export_text_encoder, resolve_preset

import pytest


def pytest_addoption(parser):
    parser.addoption("--run_large", action="store_true", default=False,
                     help="also run the tests marked large (trained models, served "
                          "exports, fresh processes); `make test` and CI do")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: trains a model, serves exports or starts processes (minutes); "
                   "run with --run_large")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="large: run with --run_large (make test)")
    for item in items:
        if "large" in item.keywords and not config.getoption("--run_large"):
            item.add_marker(skip)
    # Under pytest-xdist's `--dist loadfile` (make test) a module's tests run in one worker,
    # so its module fixtures (a trained run, an export) are built once. Modules with large
    # tests first (a stable sort that keeps each module's tests together): the workers
    # take the minutes-long modules while there are two of them to share, and the
    # seconds-long ones fill the end.
    large = {item.path for item in items if "large" in item.keywords}
    items.sort(key=lambda item: item.path not in large)


@pytest.fixture(scope="session")
def movielens():
    return load_movielens_100k()


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT over the real MiniLM WordPiece vocabulary."""
    vocabulary = (Path(resolve_preset("bundled-minilm")) / "vocab.txt").read_text().split("\n")
    vocabulary = [v for v in vocabulary if v]
    backbone, preprocessor = tiny_bert(vocabulary, sequence_length=32)
    return export_text_encoder(tmp_path_factory.mktemp("encoders") / "tiny",
                               sequence_length=32, backbone=backbone,
                               preprocessor=preprocessor)


@pytest.fixture(scope="session")
def movielens_slice(movielens, tmp_path_factory) -> Path:
    """The first 300 users of MovieLens-100K as CSV files in the generic schema."""
    folder = tmp_path_factory.mktemp("slice")
    inter = movielens.interactions
    inter = inter[inter["user_id"].astype(int) <= 300]
    inter.to_csv(folder / "interactions.csv", index=False)
    movielens.items.drop(columns="title").rename(columns={"text": "title"}).to_csv(
        folder / "items.csv", index=False)
    return folder


def slice_config(folder: Path, run_dir: Path, **overrides):
    values = {
        "run_dir": str(run_dir),
        "data.source": "csv",
        "data.interactions": str(folder / "interactions.csv"),
        "data.items": str(folder / "items.csv"),
        "data.rating_column": "rating",
        "data.context_column": "context_text",
        "data.text_columns": ["title"],
        "data.categorical_columns": ["genres"],
        "data.numeric_columns": ["year"],
        "encoder.sequence_length": 32,
        # The default order-aware history costs about 5x the mean's training time on a
        # CPU: tests of other features train the mean. The attention path is trained by
        # test_end_to_end, test_export, the XLA test and test_sequence.
        "towers.history_encoder": "mean",
    }
    values.update(overrides)
    return load_config(None, values)


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    """The real bundled all-MiniLM-L6-v2, exported once for the session."""
    return export_text_encoder(tmp_path_factory.mktemp("encoders") / "minilm",
                               "bundled-minilm", 32)


@pytest.fixture
def pipeline_log(caplog):
    """caplog over the library's step reports ("towerrec.steps" at INFO), which the CLI
    keeps from propagating to the root logger where caplog listens."""
    logger = logging.getLogger("towerrec.steps")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
