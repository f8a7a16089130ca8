"""embed-catalogue on Beam's DirectRunner (two worker processes): the embeddings equal the
in-process ones, and the ScaNN export built from them answers as the in-process index."""
from __future__ import annotations

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import to_dict
from towerrec.data.dataset import DataError
from towerrec.evaluation.evaluate import candidate_embeddings, query_embeddings, training_queries
from towerrec.export.export import export_models, utf8
from towerrec.export.index import Index, build_index
from towerrec.pipelines.cli import main
from towerrec.pipelines.embed_catalogue import EMBEDDINGS_DIR, read_embeddings
from towerrec.training.prior import served_candidates, served_queries
from towerrec.training.train import train

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import slice_config

pytestmark = pytest.mark.large
QUERIES = 50


@pytest.fixture(scope="module")
def beam_run(tiny_encoder_dir, movielens_slice, tmp_path_factory):
    """A trained slice run whose items come as two CSV shards, its candidate_tower
    exported, and embed-catalogue run over the shards with --publish."""
    folder = tmp_path_factory.mktemp("beam_run")
    (folder / "run").mkdir()
    (folder / "run" / "encoder").symlink_to(tiny_encoder_dir)
    items = pd.read_csv(movielens_slice / "items.csv", dtype=str, keep_default_na=False)
    (folder / "items").mkdir()
    half = len(items) // 2
    for shard, part in enumerate((items.iloc[:half], items.iloc[half:])):
        part.to_csv(folder / "items" / f"items-{shard}.csv", index=False)
    config = slice_config(movielens_slice, folder / "run", **{
        "training.epochs": 1, "prior.calibrate": False})
    run = train(config, verbose=0)
    base = folder / "models"
    export_models(run, base, models=["candidate_tower"])
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    # The run reads its items from one file; embed-catalogue the same items from shards.
    code = main(["embed-catalogue", "--config", str(config_path), "--model-base-path",
                 str(base), "--items", str(folder / "items" / "items-*.csv"), "--publish",
                 "--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert code == 0
    return run, base, folder


def test_beam_embeddings_equal_the_in_process_ones(beam_run):
    run, _, _ = beam_run
    output = run.config.run_path / EMBEDDINGS_DIR
    assert len(list(output.glob("part-*"))) >= 1
    np.testing.assert_allclose(read_embeddings(str(output), run.catalogue["item_id"]),
                               candidate_embeddings(run), atol=1e-5)


def test_scann_export_from_beam_answers_as_the_in_process_index(beam_run, tmp_path):
    import scann  # noqa: F401  (registers the ScaNN ops)
    import tensorflow as tf

    run, base, _ = beam_run
    in_process = tmp_path / "index"
    build_index(served_candidates(run, candidate_embeddings(run)), run.catalogue["item_id"],
                in_process)
    queries = training_queries(run, QUERIES)
    has_history = (queries.history != "").any(axis=1)
    expected, _ = Index(in_process).search(
        served_queries(run, query_embeddings(run, queries), has_history), 10)
    served = tf.saved_model.load(str(sorted((base / "retrieval_scann").iterdir())[-1]))
    answer = served.signatures["serving_default"](
        user_id=tf.constant(utf8(queries.user_id)), history=tf.constant(utf8(queries.history)),
        context_text=tf.constant(utf8(queries.context_text)))
    top = answer["item_ids"].numpy()[:, :10].astype(str)
    # Served retrieval leaves out each request's history; the index does not.
    compared = 0
    for found, wanted, history in zip(top, expected.astype(str), queries.history):
        wanted = [i for i in wanted if i not in set(history)]
        assert list(found[:len(wanted)]) == wanted
        compared += len(wanted)
    assert compared >= 5 * QUERIES


def test_shards_that_are_not_the_catalogue_are_refused(beam_run, tmp_path):
    run, _, _ = beam_run
    shards = sorted((run.config.run_path / EMBEDDINGS_DIR).glob("part-*"))
    frame = pd.concat([pd.read_parquet(s) for s in shards])
    frame.iloc[1:].to_parquet(tmp_path / "part-0.parquet")
    with pytest.raises(DataError, match="1 catalogue item\\(s\\) missing"):
        read_embeddings(str(tmp_path), run.catalogue["item_id"])


def test_an_export_of_another_model_is_refused(beam_run, capsys):
    run, base, folder = beam_run
    # The run's weights are newer than the export it would embed with.
    (run.config.run_path / "model" / "weights.index").touch()
    code = main(["embed-catalogue", "--config", str(folder / "config.yaml"),
                 "--model-base-path", str(base)])
    assert code == 2
    assert "was not exported from the run's model as it is now" in capsys.readouterr().err


def test_a_bad_items_file_is_a_one_line_error(beam_run, tmp_path, capsys):
    _, base, folder = beam_run
    export_models(beam_run[0], base, models=["candidate_tower"])  # newer than the weights
    (tmp_path / "items.csv").write_text("item_id,title,genres,year\n1,,Drama,1999\n")
    code = main(["embed-catalogue", "--config", str(folder / "config.yaml"),
                 "--model-base-path", str(base), "--items", str(tmp_path / "items.csv")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the Beam pipeline failed: " in err and "has an empty title" in err, err
    assert "Traceback" not in err
