"""embed-catalogue on Beam's DirectRunner against the same SavedModel in process.

    python benchmarks/embed_catalogue.py --config <a trained run's config> [--copies 10]
        [--workers 2]

Exports the run's candidate_tower (the text encoder inside), writes its catalogue `--copies`
times over (new ids) as 2 x `--workers` CSV shards in the items schema, and times, in one
run: the SavedModel called in this process in batches of 256 over the same items; and
`embed_catalogue` (towerrec.pipelines.embed_catalogue) on DirectRunner with `--workers`
worker processes (multi_processing), reading, embedding and writing Parquet shards. Prints
items per second of each and their ratio; writes benchmarks/results/embed_catalogue/*.json.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from towerrec.config import load_config  # noqa: E402
from towerrec.export.export import export_models  # noqa: E402
from towerrec.pipelines.embed_catalogue import (  # noqa: E402
    MAX_BATCH,
    embed_catalogue,
    read_items,
)
from towerrec.training.run import load_run  # noqa: E402

YEAR = re.compile(r" \(\d{4}\)$")


def items_schema(run) -> pd.DataFrame:
    """The MovieLens run's catalogue in the columns its source reads (title without the
    year it appends, genres, year)."""
    items = run.dataset.items
    return pd.DataFrame({"item_id": items["item_id"],
                         "title": items["title"].str.replace(YEAR, "", regex=True),
                         "genres": items["genres"], "year": items["year"]})


class _File:
    """What read_items reads: a Beam ReadableFile's path and open()."""

    def __init__(self, path: Path):
        self.metadata = type("Metadata", (), {"path": str(path)})()
        self.path = path

    def open(self):
        return open(self.path, "rb")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/embed_catalogue/result.json")
    args = parser.parse_args(argv)
    import tensorflow_text  # noqa: F401

    config = load_config(args.config)
    if config.data.source != "movielens-100k":
        parser.error(f"--config: a MovieLens-100K run (its data.source is "
                     f"{config.data.source}): the benchmark writes MovieLens' item columns")
    run = load_run(config)
    with tempfile.TemporaryDirectory(prefix="towerrec-embed-bench-") as tmp:
        return _measure(args, config, run, Path(tmp))


def _measure(args, config, run, folder: Path) -> int:
    """Both ways over the same CSV shards in `folder` (removed afterwards)."""
    import tensorflow as tf

    written = export_models(run, folder / "models", models=["candidate_tower"])
    model_dir = written["candidate_tower"]
    base = items_schema(run)
    catalogue = pd.concat([base.assign(item_id=base["item_id"].astype(str) + f"-{c}")
                           for c in range(args.copies)], ignore_index=True)
    shards = 2 * args.workers
    for shard in range(shards):
        catalogue.iloc[shard::shards].to_csv(folder / f"items-{shard}.csv", index=False)
    n = len(catalogue)
    print(f"{n:,} items ({args.copies} copies of {len(base):,}), {shards} CSV shards; "
          f"model {model_dir}")

    # In process: the same reading and the same SavedModel, batches of MAX_BATCH.
    model = tf.saved_model.load(str(model_dir))
    signature = model.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    started = time.perf_counter()
    rows = [row for shard in range(shards)
            for row in read_items(_File(folder / f"items-{shard}.csv"), config)]
    for i in range(0, len(rows), MAX_BATCH):
        batch = rows[i:i + MAX_BATCH]
        signature(**{k: tf.constant([r[k] for r in batch], s.dtype) for k, s in specs.items()})
    in_process = time.perf_counter() - started

    started = time.perf_counter()
    embed_catalogue(config, str(folder / "items-*.csv"), str(model_dir),
                    str(folder / "embeddings"),
                    ["--runner", "DirectRunner", f"--direct_num_workers={args.workers}",
                     "--direct_running_mode=multi_processing"])
    beam = time.perf_counter() - started
    written_rows = sum(len(pd.read_parquet(p)) for p in (folder / "embeddings").glob("part-*"))
    assert written_rows == n, (written_rows, n)

    result = {"items": n, "workers": args.workers, "in_process_seconds": round(in_process, 2),
              "beam_seconds": round(beam, 2),
              "in_process_items_per_second": round(n / in_process),
              "beam_items_per_second": round(n / beam),
              "beam_over_in_process": round(in_process / beam, 3)}
    print(json.dumps(result, indent=2))
    print(f"\nDirectRunner with {args.workers} workers: {n / beam:,.0f} items/s, "
          f"{in_process / beam:.2f}x the in-process SavedModel's {n / in_process:,.0f} items/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
