"""Retrain versus training from scratch on MovieLens-100K, measured in one run.

MovieLens is split in time: the first 90% of interactions are the data a model was
trained and published on; the last 10% (and the 45 items first seen in them) arrive as new
data. Then, on the same machine and the same splits:

* retrain: `towerrec retrain` (warm start from the published model, `retrain.epochs` epochs
  on all data, exports staged, gate, publish);
* scratch: a new model trained on all data (`training.epochs` epochs), exported the same way.

Prints wall times, their ratio, and both models' metrics on the gate splits.

    .venv/bin/python benchmarks/retrain.py [--folder /tmp/towerrec-retrain-bench]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import towerrec.towers  # noqa: E402,F401
from towerrec.config import load_config  # noqa: E402
from towerrec.data.movielens import load_movielens_100k  # noqa: E402
from towerrec.evaluation.evaluate import evaluate_split, markdown_table  # noqa: E402
from towerrec.export.export import discard, export_models  # noqa: E402
from towerrec.pipelines.cli import log_pipeline_steps  # noqa: E402
from towerrec.pipelines.retrain import RECENT, retrain  # noqa: E402
from towerrec.testing import csv_config_values, write_time_split  # noqa: E402
from towerrec.training.train import train  # noqa: E402

import pandas as pd  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default="/tmp/towerrec-retrain-bench")
    args = parser.parse_args()
    log_pipeline_steps()  # the library's step reports, as the CLI shows them
    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    paths = write_time_split(load_movielens_100k(), folder / "data")
    base_path = folder / "models"
    config = load_config(None, {**csv_config_values(paths), "run_dir": str(folder / "run")})

    print("== published model: trained on the first 90% ==")
    export_models(train(config, verbose=0), base_path)

    print("== retrain on the last 10% ==")
    started = time.time()
    result = retrain(config, str(paths["new_interactions"]), str(paths["new_items"]),
                     base_path, verbose=0)
    retrain_seconds = time.time() - started
    generation = result.generation

    print("== from scratch on all data, the same splits ==")
    everything = folder / "data" / "all_interactions.csv"
    pd.concat([pd.read_csv(paths["interactions"]), pd.read_csv(paths["new_interactions"])]
              ).to_csv(everything, index=False)
    all_items = folder / "data" / "all_items.csv"
    pd.concat([pd.read_csv(paths["items"]), pd.read_csv(paths["new_items"])]
              ).to_csv(all_items, index=False)
    scratch_config = dataclasses.replace(config, run_dir=str(folder / "scratch"), data=(
        dataclasses.replace(config.data, interactions=str(everything), items=str(all_items))))
    shutil.copytree(generation / "splits", folder / "scratch" / "splits")
    (folder / "scratch" / "encoder").parent.mkdir(parents=True, exist_ok=True)
    (folder / "scratch" / "encoder").symlink_to((folder / "run" / "encoder").resolve())
    started = time.time()
    scratch = train(scratch_config, verbose=0)
    discard(export_models(scratch, folder / "scratch_models", stage_only=True))
    scratch_seconds = time.time() - started

    splits = [s for s in config.retrain.gate_splits if s in scratch.splits]
    table = {"retrained": result.metrics["retrained"],
             "scratch": {s: evaluate_split(scratch, s) for s in splits}}
    if "published" in result.metrics:
        table = {"published (before)": result.metrics["published"], **table}
    print(markdown_table(table))
    print(f"\nretrain {retrain_seconds:.0f}s ({config.retrain.epochs} epochs, warm start, "
          f"exports + gate included) vs scratch {scratch_seconds:.0f}s "
          f"({config.training.epochs} epochs + exports): ratio "
          f"{retrain_seconds / scratch_seconds:.2f}")
    print(f"published: {sorted(result.published)}; '{RECENT}' = the per-user last "
          f"{config.split.warm_test_fraction:.0%} of the new interactions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
