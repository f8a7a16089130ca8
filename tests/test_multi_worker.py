"""Multi-worker training: two `towerrec train` processes on 127.0.0.1 (TF_CONFIG, CPU)
train one model together; a killed worker stops the other with a clear error, and the
restarted cluster resumes from the last backup instead of epoch 1."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
from towerrec.config import ConfigError, to_dict
from towerrec.evaluation.evaluate import evaluate_split
from towerrec.training.run import load_run
from towerrec.training.train import BACKUP_DIR, train

import numpy as np
import pytest
import yaml

from tests.conftest import slice_config

pytestmark = pytest.mark.large
ROOT = Path(__file__).parents[1]
GLOBAL_BATCH = 256


def _free_ports(n: int):
    """n ports that bind now, below the system's ephemeral range (where the port-0 binds
    of other tests' servers land: one could take a port between this check and the
    workers' bind), in a block of this pytest-xdist worker's own."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = (map(int, ephemeral.read_text().split()) if ephemeral.exists()
                 else (32768, 60999))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
    block = 200
    start = low - block * (worker + 1)
    if start < 1024:  # a range that starts low: the blocks go above it
        start = high + 1 + block * worker
    assert start + block <= 65536, f"no port block outside the ephemeral range {low}-{high}"
    ports = []
    for port in range(start, start + block):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports in {start}-{start + block - 1}")


class Cluster:
    """Two workers of one `towerrec train --config`, each with its TF_CONFIG; worker 0 is
    the chief. Their output goes to files in `folder`."""

    def __init__(self, config_path: Path, folder: Path):
        self.config_path, self.folder = config_path, folder
        self.workers = []

    def start(self, attempt: str):
        addresses = [f"127.0.0.1:{p}" for p in _free_ports(2)]
        self.logs = []
        for index in range(2):
            # TMPDIR: a non-chief's copy of the run goes under the test's folder.
            env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(self.folder),
                       TF_CONFIG=json.dumps({
                           "cluster": {"worker": addresses},
                           "task": {"type": "worker", "index": index}}))
            log = self.folder / f"{attempt}-worker{index}.log"
            self.logs.append(log)
            with log.open("w") as out:  # the child holds its own copy of the descriptor
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-m", "towerrec.pipelines.cli", "train",
                     "--config", str(self.config_path)],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        return self

    def wait(self, timeout: float):
        codes = [w.wait(timeout=timeout) for w in self.workers]
        self.workers = []
        return codes, [p.read_text() for p in self.logs]

    def run(self, attempt: str, timeout: float = 900):
        """Starts both workers and waits for them: (exit codes, logs)."""
        self.start(attempt)
        try:
            return self.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        for w in self.workers:
            if w.poll() is None:
                w.kill()
        self.workers = []


@pytest.fixture
def cluster_config(tiny_encoder_dir, movielens_slice, tmp_path):
    """make(name, epochs, **overrides) -> (config, its YAML file): the slice, trained over
    the two workers' cluster, in tmp_path / name."""
    def make(name: str, epochs: int, **overrides):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "encoder").symlink_to(tiny_encoder_dir)
        config = slice_config(movielens_slice, run_dir, **{
            "training.epochs": epochs, "training.batch_size": GLOBAL_BATCH,
            "training.strategy": "multi_worker", "training.worker_timeout_seconds": 60,
            "prior.calibrate": False, **overrides})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(to_dict(config)))
        return config, path
    return make


def _losses(log: str):
    return [float(x) for x in re.findall(r" - loss: ([0-9.]+)", log)]


def test_two_workers_train_one_model_as_one_process_does(cluster_config, tmp_path):
    config, path = cluster_config("together", epochs=3)
    codes, logs = Cluster(path, tmp_path).run("train")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MultiWorkerMirroredStrategy (worker 0, chief), 2 replicas" in logs[0]
    assert "MultiWorkerMirroredStrategy (worker 1), 2 replicas" in logs[1]
    losses = _losses(logs[0])
    assert len(losses) == 3 and losses[-1] < 0.97 * losses[0], losses
    # The chief wrote the run, and deleted the backup when training ended well; the other
    # worker removed its own copy but its encoder folder, and said so.
    assert (config.run_path / "model" / "weights.index").exists()
    assert "trained in" in logs[1] and "as a worker; the chief wrote the run" in logs[1]
    own = (tmp_path / "towerrec-worker-1"
           / os.path.abspath(config.run_path).lstrip("/"))
    assert sorted(p.name for p in own.iterdir()) == ["encoder"]
    # Its encoder: the chief's SavedModels, a cache of its own.
    assert (own / "encoder" / "encoder").is_symlink()
    cache = own / "encoder" / "embedding_cache"
    assert cache.is_dir() and not cache.is_symlink()
    assert not [p for p in (config.run_path / BACKUP_DIR).rglob("*") if p.is_file()]
    together = evaluate_split(load_run(config), "warm")

    # One process, the same global batch and epochs.
    alone_config, _ = cluster_config("alone", epochs=3, **{"training.strategy": "default"})
    alone = evaluate_split(train(alone_config, verbose=0), "warm")
    print({"two workers": together, "one process": alone})
    se = np.hypot(together["ndcg_at_10_se"], alone["ndcg_at_10_se"])
    assert abs(together["ndcg_at_10"] - alone["ndcg_at_10"]) < 2 * se


def test_a_killed_worker_stops_the_cluster_and_a_restart_resumes_from_the_backup(
        cluster_config, tmp_path):
    config, path = cluster_config("resumed", epochs=4)
    backup = config.run_path / BACKUP_DIR / "chief"
    cluster = Cluster(path, tmp_path).start("first")
    try:
        # Two epochs backed up (the backup's marker names the checkpoint of each).
        deadline = time.monotonic() + 600
        while not re.search(r"ckpt-2\b", _read(backup / "checkpoint")):
            assert time.monotonic() < deadline, "no backup of epoch 2 within 600 s"
            assert all(w.poll() is None for w in cluster.workers), "a worker exited"
            time.sleep(0.2)
        cluster.workers[1].kill()
        chief = cluster.workers[0]
        code = chief.wait(timeout=300)  # within the collective timeout (60 s) and a margin
        log = cluster.logs[0].read_text()
    finally:
        cluster.kill()
    assert code == 2, log[-3000:]
    assert "towerrec train: error: training stopped: another worker of the cluster died" in log
    assert str(config.run_path / BACKUP_DIR) in log
    assert "/job:worker/replica:0/task:1" in log  # which worker is gone
    assert "Traceback" not in log

    codes, logs = Cluster(path, tmp_path).run("restart")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    resumed = re.search(r"resumed from the backup: training continues at epoch (\d+)", logs[0])
    assert resumed and int(resumed.group(1)) >= 3, logs[0][-3000:]
    # The epochs it ran: from the resumed one to the last, not from epoch 1.
    assert len(_losses(logs[0])) == 4 - int(resumed.group(1)) + 1
    assert (config.run_path / "model" / "weights.index").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_multi_worker_with_prior_calibration_is_refused(cluster_config, tmp_path):
    config, _ = cluster_config("calibrated", epochs=1, **{"prior.calibrate": True})
    with pytest.raises(ConfigError, match="does not calibrate the item prior yet"):
        train(config, verbose=0)
