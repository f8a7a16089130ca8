"""The `towerrec` command: one subcommand per pipeline step, each taking --config."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from towerrec.config import ConfigError, load_config
from towerrec.data.dataset import DataError
from towerrec.stages import stage

import yaml

VERBOSE_HELP = "show TensorFlow's own log lines and warnings (hidden by default)"
QUIET_HELP = ("show only towerrec's warnings and errors: no step reports (stage times, "
              "gate lines); progress bars stay")


def _train(args) -> int:
    from towerrec.training.calibrate import calibrate_prior
    from towerrec.training.train import train

    config = load_config(args.config, _overrides(args))
    started = time.time()
    run = train(config)
    calibrate_prior(run)
    if run.config.run_path != config.run_path:  # a worker that is not the chief
        print(f"trained in {time.time() - started:.0f}s as a worker; the chief wrote the run "
              f"({config.run_path}); this worker removed its own copy "
              f"({run.config.run_path}) but for its encoder folder")
        return 0
    print(f"trained in {time.time() - started:.0f}s; model in {config.run_path / 'model'}, "
          f"TensorBoard logs in {config.run_path / 'logs'}")
    if args.evaluate:
        return _evaluate(args)
    return 0


def _encode(args) -> int:
    from towerrec.training.run import encode

    config = load_config(args.config, _overrides(args))
    counts = encode(config)
    print(f"encoded {counts['catalogue']} catalogue texts and {counts['contexts']} distinct "
          f"contexts into {config.run_path / 'encoder'}")
    return 0


def _evaluate(args) -> int:
    from towerrec.evaluation.evaluate import METRIC_NOTE, evaluate_run, markdown_table
    from towerrec.training.run import load_run

    config = _run_config(args)
    if args.plot:
        from towerrec.evaluation.plots import plot_recall_curves, pyplot
        pyplot()  # no matplotlib: a one-line error now, not after the evaluation
    run = load_run(config)
    with stage("evaluate", items=len(run.catalogue["item_id"])) as record:
        metrics = evaluate_run(run, curve=args.plot)
        record["users"] = sum(m["users"] for m in metrics.values())
    table = markdown_table({config.name: metrics})
    print(table)
    print(f"\n{METRIC_NOTE}")
    (config.run_path / "evaluation.json").write_text(json.dumps(metrics, indent=2))
    (config.run_path / "evaluation.md").write_text(table + f"\n\n{METRIC_NOTE}\n")
    if args.plot:
        curves = {split: {config.name: m["recall_curve"]} for split, m in metrics.items()}
        for path in plot_recall_curves(curves, config.run_path / "plots", config.name):
            print(f"wrote {path}")
    return 0


def _index(args) -> int:
    from towerrec.evaluation.evaluate import (
        candidate_embeddings,
        query_embeddings,
        training_queries,
    )
    from towerrec.export.export import index_and_export
    from towerrec.export.index import INDEX_DIR, Index, recall_against_exact
    from towerrec.training.prior import served_queries
    from towerrec.training.run import load_run

    config = _run_config(args)
    run = load_run(config)
    directory = config.run_path / INDEX_DIR
    with stage("build index", items=len(run.catalogue["item_id"])):
        settings = index_and_export(run, candidate_embeddings(run)).index
    index = Index(directory)
    sample = training_queries(run, 1000)
    queries = served_queries(run, query_embeddings(run, sample),
                             (sample.history != "").any(axis=1))
    found, _ = index.search(queries, 10)
    exact, _ = index.brute_force(queries, 10)
    recall = recall_against_exact(found, exact)
    print(f"index of {len(index.item_ids)} items in {directory}: {settings}")
    print(f"recall@10 against exact search on {len(queries)} training users' queries: "
          f"{recall:.3f}")
    return 0


def _export(args) -> int:
    from towerrec.export.export import export_models
    from towerrec.training.run import load_run

    run = load_run(_run_config(args))
    with stage("export", items=len(run.catalogue["item_id"])):
        written = export_models(run, Path(args.model_base_path))
    for name, path in written.items():
        print(f"{name:24s} {path}")
    return 0


def _add_items(args) -> int:
    from towerrec.pipelines.add_items import add_items

    config = load_config(args.config, _overrides(args))
    result = add_items(config, args.items, args.model_base_path)
    print(f"added {len(result.items)} item(s)"
          + (f" ({result.resumed} added by an earlier, unfinished add-items)"
             if result.resumed else "") + f"; index rebuilt: {result.index}")
    for name, path in result.exports.items():
        print(f"{name:24s} {path}")
    return 0


def _embed_catalogue(args) -> int:
    from towerrec.export.export import index_and_export
    from towerrec.export.publish import (
        MODEL_WEIGHTS,
        exclusive,
        provenance_run_dir,
        run_lock,
        served_version,
    )
    from towerrec.pipelines.embed_catalogue import (
        EMBEDDINGS_DIR,
        embed_catalogue,
        read_embeddings,
    )
    from towerrec.training.run import load_run

    base_path = Path(args.model_base_path)
    # The served models must not move while their candidate_tower embeds the catalogue.
    with exclusive(base_path, create=False) if args.publish else contextlib.nullcontext():
        config = _run_config(args)
        model = served_version(base_path / "candidate_tower")
        if model is None:
            raise ConfigError(f"no candidate_tower under {base_path}: run `towerrec export "
                              f"--model-base-path {base_path}` first")
        weights = config.run_path / MODEL_WEIGHTS
        exported_from = provenance_run_dir(model)
        if (exported_from is None or exported_from.resolve() != config.run_path.resolve()
                or (weights.exists() and weights.stat().st_mtime
                    > (model / "saved_model.pb").stat().st_mtime)):
            raise ConfigError(f"{model} was not exported from the run's model as it is now "
                              f"({config.run_path}): run `towerrec export --config ... "
                              f"--model-base-path {base_path}` first, so that the index "
                              "and the query tower match the embeddings")
        items = args.items or config.data.items
        if not items:
            raise ConfigError("--items: the items file(s) to embed (a glob), in the columns "
                              f"of the config's source ({config.data.source})")
        output = args.output or str(config.run_path / EMBEDDINGS_DIR)
        beam_args = ["--runner", args.runner, *[a for a in args.beam_args if a != "--"]]
        with run_lock(config.run_path):
            with stage(f"embed catalogue on Beam ({args.runner})") as record:
                record["shards"] = embed_catalogue(config, items, str(model), output,
                                                   beam_args)
            run = load_run(config)
            with stage("index from the embeddings", items=len(run.catalogue["item_id"])):
                built = index_and_export(
                    run, read_embeddings(output, run.catalogue["item_id"]),
                    base_path if args.publish else None)
    print(f"embedded {len(run.catalogue['item_id'])} items with {model} into {output}; "
          f"index rebuilt: {built.index}")
    for name, path in built.exports.items():
        print(f"{name:24s} {path}")
    return 0


def _train_ranker(args) -> int:
    from towerrec.evaluation.evaluate import markdown_table
    from towerrec.training.rank import train_ranker

    config = _run_config(args)
    with stage("train ranker"):
        results = train_ranker(config)
    print(f"\nTop 10 of retrieval vs retrieve {config.ranker.retrieved} then rerank (full "
          "catalogue, training items excluded, per-user mean):")
    print(markdown_table(results, columns=("recall_at_10", "ndcg_at_10")))
    for split in results["retrieval"]:
        before = results["retrieval"][split]["ndcg_at_10"]
        after = results["retrieval+rerank"][split]["ndcg_at_10"]
        print(f"{split:10s} NDCG@10 {before:.4f} -> {after:.4f} ({after / before - 1:+.1%})")
    (config.run_path / "ranker" / "evaluation.json").write_text(json.dumps(results, indent=2))
    return 0


def _retrain(args) -> int:
    from towerrec.pipelines.retrain import retrain

    config = load_config(args.config, _overrides(args))
    result = retrain(config, args.new_interactions, args.new_items,
                     Path(args.model_base_path))
    for name, path in result.published.items():
        print(f"{name:24s} {path}")
    # Exit 3 when the gate refused: scripts can tell "not published" from an error.
    return 0 if result.published else 3


def _rollback(args) -> int:
    from towerrec.export.publish import MODELS, rollback

    models = [m for m in MODELS if (Path(args.model_base_path) / m).is_dir()] \
        if args.model == "all" else [args.model]
    for name, path in rollback(Path(args.model_base_path), models).items():
        print(f"{name:24s} now serves {path}")
    return 0


def _synth(args) -> int:
    from towerrec.data.synthetic import generate

    started = time.time()
    with stage("generate") as record:
        written = generate(args.out, args.size, args.seed, args.items, args.interactions,
                           args.users)
        record.update(interactions=written["interactions"], items=written["items"])
    seconds = time.time() - started
    print(f"{written['items']:,} items ({written['item_shards']} shard(s)), "
          f"{written['interactions']:,} interactions ({written['interaction_shards']} "
          f"shard(s)), {written['users']:,} users, {written['topics']} topics in {args.out}")
    print(f"{seconds:.1f}s, {(written['items'] + written['interactions']) / seconds:,.0f} "
          "rows/s")
    return 0


def _serve(args) -> int:
    import logging

    from towerrec.serving.model_config import ModelConfigError
    from towerrec.serving.options import ServerOptions
    from towerrec.serving.server import run_until_signal

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("towerrec.serving").setLevel(logging.INFO)
    try:
        return run_until_signal(ServerOptions(
            model_base_path=args.model_base_path or (None if args.model_config_file
                                                     else "models"),
            model_config_file=args.model_config_file,
            host=args.host, grpc_port=args.port, rest_port=args.rest_api_port,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            enable_batching=args.enable_batching, max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros,
            max_request_bytes=args.max_request_bytes,
            max_rows_per_request=args.max_rows_per_request,
            max_values_per_row=args.max_values_per_row,
            request_timeout_seconds=args.request_timeout_seconds,
            rest_idle_timeout_seconds=args.rest_idle_timeout_seconds))
    except (ModelConfigError, OSError, ValueError) as e:
        print(f"towerrec serve: error: {e}", file=sys.stderr)
        return 2


def _query(args) -> int:
    from towerrec.serving.client import RecommenderClient
    from towerrec.serving.errors import ServingError

    history = [h.strip() for h in (args.history or "").split(";") if h.strip()]
    inputs = {"user_id": [args.user], "history": [history or [""]],
              "context_text": [args.context]}
    try:
        with RecommenderClient(args.address, timeout=args.timeout) as client:
            answer = client.predict(args.model, inputs, version=args.version)
    except ServingError as e:
        print(f"towerrec query: error: {e}", file=sys.stderr)
        return 2
    if "item_ids" not in answer or "scores" not in answer:
        print(f"towerrec query: error: {args.model} answered {sorted(answer)}, not item_ids "
              "and scores", file=sys.stderr)
        return 2
    ids = answer["item_ids"][0][:args.top]
    columns = {"rank": [str(rank + 1) for rank in range(len(ids))],
               "item id": [_text(item) for item in ids]}
    if "titles" in answer:
        columns["title"] = [_text(title) for title in answer["titles"][0][:args.top]]
    columns["score"] = [f"{score:.4f}" for score in answer["scores"][0][:args.top]]
    if "is_new" in answer:  # a new item holds retrieval's slot: its score is not the order
        columns["new"] = ["yes" if new else "" for new in answer["is_new"][0][:args.top]]
    print(f"{args.model} version {answer.version}")
    header = list(columns)
    rows = [list(row) for row in zip(*columns.values())]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _run_config(args):
    """The config, pointed at the run to act on: given --model-base-path, the newer of the
    config's run and the run behind the models served there (a retrain's generation)."""
    from towerrec.export.publish import latest_run_config

    config = load_config(args.config, _overrides(args))
    base_path = getattr(args, "model_base_path", None)
    return latest_run_config(config, Path(base_path)) if base_path else config


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _overrides(args) -> dict:
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towerrec", description="BERT two-tower retrieval on TensorFlow Recommenders.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    # Every subcommand takes -v and -q too; SUPPRESS: without it, `towerrec -v <command>`
    # holds.
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help=VERBOSE_HELP)
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help=QUIET_HELP)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  parents=[verbosity])
        sub.add_argument("--config", help="YAML run config (default: MovieLens-100K)")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a config value, e.g. --set training.epochs=3")
        sub.set_defaults(handler=handler)
        return sub

    train = command("train", _train, "Train the two towers (progress per epoch, "
                    "TensorBoard logs and checkpoints in the run folder).")
    train.add_argument("--evaluate", action="store_true", help="evaluate after training")
    command("encode", _encode, "Encode every catalogue text and distinct context with the "
            "frozen encoder into the run's cache (resumable; `train` then finds them).")
    served_run = ("act on the newer of the config's run and the run behind the models "
                  "served from this base path (after a retrain: its generation)")
    evaluate = command("evaluate", _evaluate, "Recall@10, Recall@100 and NDCG@10 per split "
                       "over the full catalogue, as a markdown table.")
    index = command("index", _index, "Embed the catalogue and build its ScaNN index (brute "
                    "force below 20k items, tree + asymmetric hashing above).")
    export = command("export", _export, "Write the SavedModels in the TF Serving layout "
                     "<model-base-path>/<model>/<version>/.")
    export.add_argument("--model-base-path", default="models",
                        help="TF Serving model base path (default: models)")
    ranker = command("train-ranker", _train_ranker, "Train the DCN ranker on retrieval's "
                     "top-100 lists and compare retrieval-only with retrieve-then-rerank "
                     "top-10 per split.")
    for sub in (train, evaluate):
        sub.add_argument("--plot", action="store_true",
                         help="(train: with --evaluate) also draw Recall@K (K = 1..100) per "
                              "split into <run_dir>/plots/recall_at_k-<split>.png")
    for sub in (evaluate, index, ranker):
        sub.add_argument("--model-base-path", default=None, help=served_run)
    add = command("add-items", _add_items, "Embed new items from their text and "
                  "attributes and add them to the index (and exports), without retraining.")
    add.add_argument("items", help="CSV or Parquet of new items (the items schema)")
    add.add_argument("--model-base-path", default=None,
                     help="also publish new export versions under this base path")
    beam = command("embed-catalogue", _embed_catalogue, "Embed the catalogue with the "
                   "exported candidate_tower on Apache Beam (RunInference), then build the "
                   "index (and, with --publish, new export versions) from the embeddings.")
    beam.add_argument("--model-base-path", default="models",
                      help="where the candidate_tower export is served from (its newest "
                           "version embeds; default: models)")
    beam.add_argument("--items", default=None,
                      help="items file(s) to embed, a glob on any filesystem Beam reads, "
                           "CSV or Parquet in the items schema (default: data.items)")
    beam.add_argument("--runner", default="DirectRunner",
                      help="DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...")
    beam.add_argument("--output", default=None,
                      help="where the embedding shards go (default: "
                           "<run_dir>/catalogue_embeddings; on a cluster, shared storage)")
    beam.add_argument("--publish", action="store_true",
                      help="also publish new versions of the exports under the base path")
    beam.add_argument("beam_args", nargs=argparse.REMAINDER,
                      help="after --: Beam pipeline options, e.g. -- --direct_num_workers=2 "
                           "--direct_running_mode=multi_processing")
    retrain = command("retrain", _retrain, "Warm-start from the served model, train on new "
                      "interactions (and items), and publish new versions of every export "
                      "only if the gate passes (exit 3 when it refuses).")
    retrain.add_argument("--new-interactions", required=True,
                         help="CSV or Parquet of new interactions (the interactions schema)")
    retrain.add_argument("--new-items", default=None,
                         help="CSV or Parquet of new items (the items schema)")
    retrain.add_argument("--model-base-path", default="models",
                         help="TF Serving model base path (default: models)")
    rollback = commands.add_parser(
        "rollback", parents=[verbosity],
        help="Serve the previous version of a model again.",
        description="Moves a model's newest version aside (to .rolled-back-<v>-<time>), so "
        "that the previous version is the newest and a running server serves it.")
    rollback.set_defaults(handler=_rollback)
    rollback.add_argument("model", help="model name, or 'all'")
    rollback.add_argument("--model-base-path", default="models",
                          help="TF Serving model base path (default: models)")
    synth = commands.add_parser(
        "synth", parents=[verbosity],
        help="Write a seeded synthetic catalogue as Parquet shards (scale tests).",
        description="Write items and interactions of a synthetic catalogue (the same for the "
        "same size and seed) as <out>/items/part-*.parquet, <out>/interactions/part-*.parquet "
        "and <out>/synthetic.json; the source `data.source: synthetic` reads them.")
    synth.set_defaults(handler=_synth)
    synth.add_argument("--size", default="S", help="XS, S, M, L (the README's sizes table) "
                       "or custom with --items, --interactions, --users (default: S)")
    synth.add_argument("--seed", type=int, default=0, help="(default: 0)")
    synth.add_argument("--out", required=True, help="folder to write; an existing one is "
                       "replaced only if it holds the same size and seed")
    for count in ("items", "interactions", "users"):
        synth.add_argument(f"--{count}", type=int, default=None,
                           help=f"with --size custom: the number of {count}")
    serve = commands.add_parser(
        "serve", parents=[verbosity],
        help="Serve the exports over TF Serving's gRPC and REST APIs.",
        description="Serve every model under --model-base-path (or a TF Serving "
        "models.config) over TF Serving's gRPC and REST APIs; new versions are loaded, "
        "warmed up and swapped in as they appear. Stops gracefully on SIGTERM/SIGINT.")
    serve.set_defaults(handler=_serve)
    from towerrec.serving.options import ServerOptions
    defaults = ServerOptions(model_base_path="models")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--model-base-path", default=None,
                       help="folder with one subfolder per model (default: models)")
    where.add_argument("--model-config-file", default=None,
                       help="a TF Serving ModelServerConfig text proto (models.config)")
    serve.add_argument("--host", default=defaults.host,
                       help=f"address to bind (default: {defaults.host})")
    serve.add_argument("--port", "--grpc-port", dest="port", type=int,
                       default=defaults.grpc_port,
                       help=f"gRPC port, 0 picks one (default: {defaults.grpc_port})")
    serve.add_argument("--rest-api-port", "--rest-port", dest="rest_api_port", type=int,
                       default=defaults.rest_port,
                       help=f"REST port, 0 picks one, -1 turns REST off (default: "
                       f"{defaults.rest_port})")
    serve.add_argument("--file-system-poll-wait-seconds", type=float,
                       default=defaults.file_system_poll_wait_seconds,
                       help="how often to look for new versions; 0 or less: load once, "
                       f"never poll (default: {defaults.file_system_poll_wait_seconds:g})")
    serve.add_argument("--enable-batching", action="store_true",
                       help="merge concurrent requests into batches (default: off)")
    serve.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                       help=f"rows per batch (default: {defaults.max_batch_size})")
    serve.add_argument("--batch-timeout-micros", type=int,
                       default=defaults.batch_timeout_micros,
                       help="how long a batch waits to fill (default: "
                       f"{defaults.batch_timeout_micros})")
    serve.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                       help=f"larger requests are refused (default: "
                       f"{defaults.max_request_bytes})")
    serve.add_argument("--max-rows-per-request", type=int,
                       default=defaults.max_rows_per_request,
                       help="requests with more rows are refused, RESOURCE_EXHAUSTED / 413 "
                       f"(default: {defaults.max_rows_per_request})")
    serve.add_argument("--max-values-per-row", type=int, default=defaults.max_values_per_row,
                       help="an input row wider than this (e.g. the ranker's candidates) "
                       f"is refused (default: {defaults.max_values_per_row})")
    serve.add_argument("--request-timeout-seconds", type=float,
                       default=defaults.request_timeout_seconds,
                       help="a request still running after this is stopped, "
                       f"DEADLINE_EXCEEDED / 504 (default: {defaults.request_timeout_seconds:g})")
    serve.add_argument("--rest-idle-timeout-seconds", type=float,
                       default=defaults.rest_idle_timeout_seconds,
                       help="a REST connection silent this long is closed (default: "
                       f"{defaults.rest_idle_timeout_seconds:g})")
    query = commands.add_parser(
        "query", parents=[verbosity],
        help="Ask a served recommender for a user's top items (gRPC).",
        description="Send one request to a TF Serving gRPC address (towerrec serve or "
        "tensorflow/serving) and print the top items as a table.")
    query.set_defaults(handler=_query)
    query.add_argument("--address", default="127.0.0.1:8500", help="host:port of gRPC")
    query.add_argument("--model", default="recommender",
                       help="model name (default: recommender)")
    query.add_argument("--version", type=int, default=None,
                       help="model version (default: the newest)")
    query.add_argument("--user", default="", help="user id (default: none, a new user)")
    query.add_argument("--history", default="",
                       help="items the user had, oldest first, separated by ';'")
    query.add_argument("--context", default="", help="free context text")
    query.add_argument("--top", type=positive_int, default=10,
                       help="rows to print (default: 10)")
    query.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")
    return parser


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def log_pipeline_steps(quiet: bool = False) -> None:
    """The library's step reports (stage times, peak memory, gate lines) on stderr, one plain
    line each; `quiet`: its warnings only."""
    import logging

    class Stderr(logging.StreamHandler):
        """Writes to sys.stderr as it is when a line is logged (tests swap it)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value):
            pass

    logger = logging.getLogger("towerrec.steps")
    if not logger.handlers:
        handler = Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def quiet_tensorflow(verbose: bool) -> None:
    """Unless verbose: no TensorFlow C++ log lines (CUDA probing on a machine without a GPU,
    oneDNN notes) and no tf_keras / TensorFlow Python warnings (e.g. a Keras "non-serializable
    objects" warning per exported model). Must run before TensorFlow is imported."""
    import logging
    import os
    import warnings

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if not verbose:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"(tensorflow|tf_keras|keras|keras_hub)\b")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if "tensorflow" not in sys.modules:  # in process (tests), TensorFlow may be loaded
        quiet_tensorflow(args.verbose)
    if args.command != "serve":
        log_pipeline_steps(args.quiet)
    from towerrec.towers.text_encoder import EncoderError
    from towerrec.training.train import ModelError
    try:
        return args.handler(args)
    except (ConfigError, DataError, EncoderError, ModelError, OSError,
            yaml.YAMLError) as e:
        print(f"towerrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
