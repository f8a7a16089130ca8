"""Cross-replica negatives: over two replicas, the loss and gradients of one step equal one
device's over the global batch; per-replica negatives differ; XLA (the softmax compiled
with the towers where no replica gathers another's candidates) takes the same step. Two
logical CPUs stand in for two accelerators (declared before TensorFlow starts, hence a
fresh process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TWO_REPLICAS = r"""
import json, sys
import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.set_visible_devices([], "GPU")

from towerrec.towers.retrieval import TwoTowerModel

rng = np.random.default_rng(0)
BATCH = 8
features = {
    "query": rng.normal(size=(BATCH, 4)).astype(np.float32),
    "candidate": rng.normal(size=(BATCH, 4)).astype(np.float32),
    "item_probability": rng.uniform(0.05, 0.5, BATCH).astype(np.float32),
    # rows 1 and 6 are the same item (in different replicas' halves): an accidental hit
    "item_index": np.array([2, 3, 4, 5, 6, 7, 3, 9], np.int64)}


def model(negatives):
    tf.keras.utils.set_random_seed(1)
    query = tf.keras.Sequential([tf.keras.layers.Lambda(lambda f: f["query"]),
                                 tf.keras.layers.Dense(3)])
    candidate = tf.keras.Sequential([tf.keras.layers.Lambda(lambda f: f["candidate"]),
                                     tf.keras.layers.Dense(3)])
    return TwoTowerModel(query, candidate, temperature=0.5, logq_correction=True,
                         remove_accidental_hits=True, negatives=negatives)


# Per step, at tracing: whether the replica's whole loss (softmax included) is one
# compiled function, or the towers alone are.
whole_loss_compiled = []


def step(model, batch):
    whole_loss_compiled.append(
        isinstance(model._compiled_loss(), tf.types.experimental.GenericFunction))
    loss, _, gradients = model.loss_and_gradients(batch)
    return loss, gradients


def one_device(xla=False):
    m = model("global")
    m.xla = xla  # one replica: the whole loss compiles, softmax included
    loss, gradients = tf.function(step)(m, {k: tf.constant(v) for k, v in features.items()})
    return float(loss), [g.numpy().tolist() for g in gradients]


def mirrored(negatives, xla):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        m = model(negatives)
        m.xla = xla  # what compile(xla=...) sets
        m.embed({k: tf.constant(v) for k, v in features.items()})  # build the weights
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(features).batch(BATCH))
    batch = next(iter(dataset))
    loss, gradients = tf.function(lambda b: strategy.run(lambda r: step(m, r), args=(b,)))(
        batch)
    total = strategy.reduce("SUM", loss, axis=None)
    summed = [strategy.reduce("SUM", g, axis=None).numpy().tolist() for g in gradients]
    return float(total), summed


result = {}
for name, xla in (("one_device", False), ("one_device_xla", True)):
    loss, gradients = one_device(xla)
    result[name] = {"loss": loss, "gradients": gradients,
                    "whole_loss_compiled": whole_loss_compiled[-1]}
for negatives, xla in (("global", False), ("global", True), ("replica", False),
                       ("replica", True)):
    loss, gradients = mirrored(negatives, xla)
    result[f"{negatives}{'_xla' if xla else ''}"] = {
        "loss": loss, "gradients": gradients, "whole_loss_compiled": whole_loss_compiled[-1]}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def two_replicas():
    done = subprocess.run([sys.executable, "-c", TWO_REPLICAS], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same_step(mine, theirs):
    assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    for a, b in zip(mine["gradients"], theirs["gradients"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["global", "global_xla"])
def test_global_negatives_over_two_replicas_equal_one_device(two_replicas, name):
    _assert_same_step(two_replicas[name], two_replicas["one_device"])


@pytest.mark.parametrize("xla,plain", [("one_device_xla", "one_device"),
                                       ("replica_xla", "replica")])
def test_the_softmax_compiled_with_the_towers_takes_the_same_step(two_replicas, xla, plain):
    # Without a cross-replica gather, XLA compiles the softmax with the towers.
    assert two_replicas[xla]["whole_loss_compiled"]
    _assert_same_step(two_replicas[xla], two_replicas[plain])


def test_with_global_negatives_over_replicas_xla_compiles_the_towers_only(two_replicas):
    assert not two_replicas["global_xla"]["whole_loss_compiled"]
    assert not two_replicas["one_device"]["whole_loss_compiled"]  # XLA off


def test_per_replica_negatives_score_fewer_candidates(two_replicas):
    # Each query's softmax over its half of the batch: fewer negatives, a smaller loss.
    assert two_replicas["replica"]["loss"] < two_replicas["one_device"]["loss"] - 0.1
