"""Cross-replica against per-replica negatives, against one replica, on one run each.

    python benchmarks/negatives.py [--config configs/movielens.yaml]

Trains the config three times with the same global batch (training.batch_size) and epochs:
on one replica; on two replicas (two logical CPU devices, MirroredStrategy) with each
replica's softmax over its own half of the batch (`training.negatives: replica`); and on
two replicas over the all-gathered global batch (`global`, the default). Prints NDCG@10 and
Recall@10 with their standard errors on warm and cold_user, and whether global negatives
are within one standard error of one replica. Writes benchmarks/results/negatives/*.json.
Each training runs in a fresh process: logical devices are set before TensorFlow starts.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "one replica": {"training.strategy": "default"},
    "2 replicas, per-replica negatives": {"training.strategy": "mirrored",
                                          "training.negatives": "replica"},
    "2 replicas, global negatives": {"training.strategy": "mirrored",
                                     "training.negatives": "global"},
}
SPLITS = ("warm", "cold_user")

TRAIN = r"""
import json, sys
import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.set_visible_devices([], "GPU")

from towerrec.config import load_config
from towerrec.evaluation.evaluate import evaluate_split
from towerrec.pipelines.cli import log_pipeline_steps
from towerrec.training.train import train

log_pipeline_steps()
run = train(load_config(sys.argv[1], json.loads(sys.argv[2])), verbose=2)
print("RESULT " + json.dumps({
    "replicas": run.model.distribute_strategy.num_replicas_in_sync,
    **{split: evaluate_split(run, split) for split in json.loads(sys.argv[3])}}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/movielens.yaml")
    parser.add_argument("--run-dir", default="runs/negatives")
    parser.add_argument("--out", default="benchmarks/results/negatives/movielens.json")
    args = parser.parse_args(argv)
    results = {}
    for name, overrides in VARIANTS.items():
        folder = Path(args.run_dir) / name.replace(" ", "_").replace(",", "")
        values = {"run_dir": str(folder), "prior.calibrate": False, **overrides}
        started = time.time()
        done = subprocess.run([sys.executable, "-c", TRAIN, args.config, json.dumps(values),
                               json.dumps(SPLITS)], cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            return 1
        line = next(x for x in done.stdout.splitlines()[::-1] if x.startswith("RESULT "))
        results[name] = {**json.loads(line[len("RESULT "):]),
                         "seconds": round(time.time() - started)}
        print(f"{name}: trained and evaluated in {results[name]['seconds']}s", flush=True)
    print("\n| training | replicas | " + " | ".join(
        f"{s} NDCG@10 | {s} Recall@10" for s in SPLITS) + " |")
    print("|---|---|" + "---|---|" * len(SPLITS))
    for name, r in results.items():
        cells = [f"{r[s][m]:.4f} ± {r[s][m + '_se']:.4f}" for s in SPLITS
                 for m in ("ndcg_at_10", "recall_at_10")]
        print(f"| {name} | {r['replicas']} | " + " | ".join(cells) + " |")
    one, per, glob = (results[n] for n in VARIANTS)
    print()
    for split in SPLITS:
        se = one[split]["ndcg_at_10_se"]
        for name, r in (("global", glob), ("per-replica", per)):
            gap = r[split]["ndcg_at_10"] - one[split]["ndcg_at_10"]
            print(f"{split}: {name} negatives NDCG@10 {r[split]['ndcg_at_10']:.4f} - one "
                  f"replica {one[split]['ndcg_at_10']:.4f} = {gap:+.4f} "
                  f"({gap / se:+.2f} SE of one replica's; "
                  f"{'within' if abs(gap) <= se else 'outside'} one SE)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "results": results},
                                         indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
