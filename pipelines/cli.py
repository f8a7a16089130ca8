"""The `towerrec` command: one subcommand per pipeline step, each taking --config."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional


from pipelines.config import ConfigError, load_config
from pipelines.data import DataError


def _train(args) -> int:
    from pipelines.train import train

    config = load_config(args.config, _overrides(args))
    started = time.time()
    train(config)
    print(f"trained in {time.time() - started:.0f}s; model in {config.run_path / 'model'}, "
          f"TensorBoard logs in {config.run_path / 'logs'}")
    if args.evaluate:
        return _evaluate(args)
    return 0


def _evaluate(args) -> int:
    from pipelines.evaluate import METRIC_NOTE, evaluate_run, markdown_table
    from pipelines.train import load_run

    config = load_config(args.config, _overrides(args))
    metrics = evaluate_run(load_run(config))
    table = markdown_table({config.name: metrics})
    print(table)
    print(f"\n{METRIC_NOTE}")
    (config.run_path / "evaluation.json").write_text(json.dumps(metrics, indent=2))
    (config.run_path / "evaluation.md").write_text(table + f"\n\n{METRIC_NOTE}\n")
    return 0


def _index(args) -> int:
    from pipelines.evaluate import candidate_embeddings, query_embeddings, training_queries
    from pipelines.index import INDEX_DIR, Index, build_index, recall_against_exact
    from pipelines.train import load_run

    config = load_config(args.config, _overrides(args))
    run = load_run(config)
    directory = config.run_path / INDEX_DIR
    settings = build_index(candidate_embeddings(run), run.catalogue["item_id"], directory)
    index = Index(directory)
    queries = query_embeddings(run, training_queries(run, 1000))
    found, _ = index.search(queries, 10)
    exact, _ = index.brute_force(queries, 10)
    recall = recall_against_exact(found, exact)
    print(f"index of {len(index.item_ids)} items in {directory}: {settings}")
    print(f"recall@10 against exact search on {len(queries)} training users' queries: "
          f"{recall:.3f}")
    return 0


def _export(args) -> int:
    from pipelines.export import export_models
    from pipelines.train import load_run

    config = load_config(args.config, _overrides(args))
    written = export_models(load_run(config), Path(args.model_base_path))
    for name, path in written.items():
        print(f"{name:24s} {path}")
    return 0


def _add_items(args) -> int:
    from pipelines.add_items import add_items

    config = load_config(args.config, _overrides(args))
    result = add_items(config, args.items, args.model_base_path)
    print(f"added {len(result['items'])} item(s); index rebuilt: {result['index']}")
    for name, path in result["exports"].items():
        print(f"{name:24s} {path}")
    return 0


def _train_ranker(args) -> int:
    from pipelines.evaluate import markdown_table
    from pipelines.rank import RETRIEVED, train_ranker

    config = load_config(args.config, _overrides(args))
    results = train_ranker(config, epochs=args.epochs)
    print(f"\nTop 10 of retrieval vs retrieve {RETRIEVED} then rerank (full catalogue, "
          "training items excluded, per-user mean):")
    print(markdown_table(results, columns=("recall_at_10", "ndcg_at_10")))
    for split in results["retrieval"]:
        before = results["retrieval"][split]["ndcg_at_10"]
        after = results["retrieval+rerank"][split]["ndcg_at_10"]
        print(f"{split:10s} NDCG@10 {before:.4f} -> {after:.4f} ({after / before - 1:+.1%})")
    (config.run_path / "ranker" / "evaluation.json").write_text(json.dumps(results, indent=2))
    return 0


def _overrides(args) -> dict:
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        import yaml
        overrides[key] = yaml.safe_load(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towerrec", description="BERT two-tower retrieval on TensorFlow Recommenders.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", help="YAML run config (default: MovieLens-100K)")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a config value, e.g. --set training.epochs=3")
        sub.set_defaults(handler=handler)
        return sub

    train = command("train", _train, "Train the two towers (progress per epoch, "
                    "TensorBoard logs and checkpoints in the run folder).")
    train.add_argument("--evaluate", action="store_true", help="evaluate after training")
    command("evaluate", _evaluate, "Recall@10, Recall@100 and NDCG@10 per split over the "
            "full catalogue, as a markdown table.")
    command("index", _index, "Embed the catalogue and build its ScaNN index (brute force "
            "below 20k items, tree + asymmetric hashing above).")
    export = command("export", _export, "Write the SavedModels in the TF Serving layout "
                     "<model-base-path>/<model>/<version>/.")
    export.add_argument("--model-base-path", default="models",
                        help="TF Serving model base path (default: models)")
    ranker = command("train-ranker", _train_ranker, "Experimental: train the DCN ranker on "
                     "retrieval's top-100 lists and compare retrieval-only with "
                     "retrieve-then-rerank (it does not beat retrieval-only yet).")
    ranker.add_argument("--epochs", type=int, default=15)
    add = command("add-items", _add_items, "Embed new items from their text and "
                  "attributes and add them to the index (and exports), without retraining.")
    add.add_argument("items", help="CSV or Parquet of new items (the items schema)")
    add.add_argument("--model-base-path", default=None,
                     help="also publish new export versions under this base path")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from towers.text_encoder import EncoderError
    try:
        return args.handler(args)
    except (ConfigError, DataError, EncoderError, FileNotFoundError) as e:
        print(f"towerrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
