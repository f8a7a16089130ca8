"""Accelerators: the training step reads numbers only and compiles with XLA; it trains
mirrored over two devices; the strategy chooser; mixed precision keeps float32 outputs."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import ConfigError, to_dict
from towerrec.data.features import tf_dataset
from towerrec.pipelines.cli import main
from towerrec.training.distribute import _tpu_resolver, choose_strategy, devices
from towerrec.training.run import prepare
from towerrec.training.train import train, training_features

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests.conftest import slice_config

# Two logical CPU devices stand in for two GPUs. They must be declared before TensorFlow
# initializes its devices, hence a fresh process.
MIRRORED_TRAINING = r"""
import json, sys
import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.set_visible_devices([], "GPU")  # the two CPUs, on a GPU machine too

from towerrec.config import load_config
from towerrec.pipelines.cli import log_pipeline_steps
from towerrec.training.distribute import choose_strategy
from towerrec.training.train import train

log_pipeline_steps()  # the step reports on stderr, as the CLI shows them
run = train(load_config(sys.argv[1]), verbose=0)
strategy = run.model.distribute_strategy
print(json.dumps({
    "auto_is_default": choose_strategy("auto") is tf.distribute.get_strategy(),
    "strategy": type(strategy).__name__,
    "replicas": strategy.num_replicas_in_sync,
    "devices": list(strategy.extended.worker_devices),
    "copies": [v.device for v in run.model.query_tower.user_embedding.embeddings.values],
    "xla": run.model.xla,
    "history": run.model.history.history}))
"""


def _run_dir(tmp_path: Path, encoder_dir: Path) -> Path:
    (tmp_path / "encoder").symlink_to(encoder_dir)
    return tmp_path


@pytest.mark.large
def test_mirrored_over_two_devices_with_xla_lowers_the_loss(
        tiny_encoder_dir, movielens_slice, tmp_path):
    config = slice_config(movielens_slice, _run_dir(tmp_path, tiny_encoder_dir), **{
        "training.epochs": 3, "training.strategy": "mirrored", "training.jit_compile": True})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    done = subprocess.run([sys.executable, "-c", MIRRORED_TRAINING, str(config_path)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["auto_is_default"]  # two CPUs are not two GPUs
    assert result["strategy"] == "MirroredStrategy" and result["replicas"] == 2
    assert [d[-5:] for d in result["devices"]] == ["CPU:0", "CPU:1"]
    assert [d[-5:] for d in result["copies"]] == ["CPU:0", "CPU:1"]  # a copy per replica
    assert result["xla"] is True
    # Each epoch's last-step loss (the sum of two replicas' in-batch softmaxes over 256
    # examples each: it falls slowly) and the warm split's NDCG@10 after each epoch.
    history = result["history"]
    loss, ndcg = history["loss"], history["warm_ndcg_at_10"]
    assert len(loss) == 3 and all(np.isfinite(loss))
    assert loss[-1] < 0.97 * loss[0], loss
    assert ndcg[-1] > 1.1 * ndcg[0], ndcg
    assert "MirroredStrategy, 2 replicas, XLA on, float32" in done.stderr


def test_strategy_chooser_picks_for_the_devices_present():
    """What the chooser should pick on this machine, whatever it has: CPU only, GPUs or a
    TPU."""
    if _tpu_resolver() is not None:
        assert isinstance(choose_strategy("auto"), tf.distribute.TPUStrategy)
        return
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    auto = choose_strategy("auto")
    if len(gpus) > 1:
        assert isinstance(auto, tf.distribute.MirroredStrategy)
        assert auto.num_replicas_in_sync == len(gpus)
    else:
        assert auto is tf.distribute.get_strategy()
    assert choose_strategy("default") is tf.distribute.get_strategy()
    assert choose_strategy("mirrored").num_replicas_in_sync == len(gpus or cpus)
    with pytest.raises(ConfigError) as error:
        choose_strategy("tpu")
    assert str(error.value) == (f"training.strategy is 'tpu' but no TPU was found "
                                f"(devices: {devices()})")


@pytest.mark.parametrize("key,value,message", [
    ("training.strategy", "gpu", "training.strategy: 'gpu' is not one of auto, default, "
                                 "mirrored, tpu, multi_worker"),
    ("training.jit_compile", 1, "config.training.jit_compile: expected bool or str, got 1"),
    ("training.mixed_precision", "float16",
     "training.mixed_precision: 'float16' is not one of null, mixed_float16, mixed_bfloat16"),
])
def test_bad_accelerator_settings_are_config_errors(movielens_slice, tmp_path, key, value,
                                                   message):
    with pytest.raises(ConfigError) as error:
        slice_config(movielens_slice, tmp_path, **{key: value})
    assert str(error.value) == message


def test_multi_worker_without_a_cluster_is_a_one_line_cli_error(movielens_slice, tmp_path,
                                                                capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(slice_config(movielens_slice, tmp_path))))
    assert main(["train", "--config", str(config_path), "--set",
                 "training.strategy=multi_worker", "--set", "prior.calibrate=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("towerrec train: error: training.strategy is 'multi_worker' but "
                          "TF_CONFIG names no cluster and task, e.g. TF_CONFIG=")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("tf_config, message", [
    ("[]", "TF_CONFIG names no cluster and task"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 5}}',
     "TF_CONFIG cannot start this worker: ValueError: 'The `task_id` 5 exceeds"),
])
def test_a_bad_tf_config_is_a_config_error(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=re.escape(message)):
        choose_strategy("multi_worker", 5.0)


def test_asking_for_a_tpu_without_one_is_a_one_line_cli_error(movielens_slice, tmp_path,
                                                              capsys):
    if _tpu_resolver() is not None:
        pytest.skip("this machine has a TPU")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(slice_config(movielens_slice, tmp_path))))
    assert main(["train", "--config", str(config_path), "--set",
                 "training.strategy=tpu"]) == 2
    err = capsys.readouterr().err
    assert err == ("towerrec train: error: training.strategy is 'tpu' but no TPU was found "
                   f"(devices: {devices()})\n")


def _string_ops(function) -> list:
    """Ops of a traced function that take or make strings."""
    return sorted({op.type for op in function.graph.get_operations()
                   if any(t.dtype == tf.string for t in list(op.inputs) + op.outputs)})


@pytest.mark.large
@pytest.mark.parametrize("fine_tune,history_encoder", [
    (False, "mean"), (True, "mean"), (False, "attention")])
def test_the_training_step_reads_static_numbers_and_compiles_with_xla(
        tiny_encoder_dir, movielens_slice, tmp_path, fine_tune, history_encoder):
    config = slice_config(movielens_slice, _run_dir(tmp_path, tiny_encoder_dir),
                          **{"encoder.fine_tune": fine_tune,
                             "towers.history_encoder": history_encoder})
    run = prepare(config)
    data = tf_dataset(training_features(run), run.text_inputs, 64, run.model.preprocess,
                      drop_remainder=True)
    specs = tf.nest.flatten(data.element_spec)
    assert all(s.dtype != tf.string and s.shape.is_fully_defined() for s in specs), specs

    loss = tf.function(lambda batch: run.model.compute_loss(batch, training=True),
                       jit_compile=True)
    assert _string_ops(loss.get_concrete_function(data.element_spec)) == []
    batch = next(iter(data))
    assert np.isfinite(loss(batch).numpy())
    for tower in (run.model.query_tower, run.model.candidate_tower):
        assert _string_ops(tf.function(tower).get_concrete_function(data.element_spec)) == []


@pytest.mark.large
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_tower_outputs_and_loss_float32(
        tiny_encoder_dir, movielens_slice, tmp_path, policy):
    config = slice_config(movielens_slice, _run_dir(tmp_path, tiny_encoder_dir), **{
        "training.epochs": 1, "training.mixed_precision": policy,
        "training.jit_compile": True})
    run = train(config, verbose=0)
    compute = {"mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}[policy]
    assert run.model.query_tower.head.layers[0].compute_dtype == compute
    assert run.model.query_tower.head.layers[0].kernel.dtype == tf.float32
    assert isinstance(run.model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer) == (
        policy == "mixed_float16")
    assert np.isfinite(run.model.history.history["loss"]).all()

    data = tf_dataset(training_features(run), run.text_inputs, 64, run.model.preprocess)
    batch = next(iter(data))
    assert run.model.query_tower(batch).dtype == tf.float32
    assert run.model.candidate_tower(batch).dtype == tf.float32
    assert run.model.compute_loss(batch).dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(run.model.query_tower(batch), axis=1), 1.0,
                               atol=1e-5)
