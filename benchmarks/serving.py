"""`towerrec serve` on loopback: latency and throughput over gRPC, in one run.

    .venv/bin/python benchmarks/serving.py --model-base-path models [--model recommender]
        [--baseline-model-base-path old-models]

Serves one model (default `recommender`, else `retrieval_brute_force`) from exports made by
`towerrec export`, in a `towerrec serve` subprocess, twice: batching off, then on. At 1, 8
and 32 concurrent gRPC clients (one channel each, one-row requests: the version's own
warm-up request's first row, with a 9-word context) it measures p50 and p99 latency and
the throughput. In the same run, in this process: the text encoder alone (preprocessor +
encoder at the request's token length, the floor of any model that encodes the context),
the loaded SavedModel called directly (no server), and, given a baseline base path (e.g.
exports of an earlier commit), the baseline's SavedModel the same way. Each SavedModel is
loaded twice (`--loads`) and its loads' calls pooled: on this machine two loads of the very
same SavedModel kept p50s up to 10% apart for a whole run (either one the faster); the
loads' spread is printed beside the ratio; a row over several loads says so ("(2 loads)":
its request count is over all of them; at several clients each client calls one load, in
turn). One export given as both model and baseline
measured 0.97x and 0.99x (2026-12-05; 0.87x-0.97x before the turns were shuffled). At
one client these calls and the served call take turns in blocks of 10 calls, in an order
shuffled every turn, so that the machine's drift (2 shared cores) hits them alike while
each stays in its steady state (see `interleaved`). So every claim is a ratio of one run:
the model's cost over the encoder's, new over old, the server's overhead
(p50 at 1 client, served / in-process), and the batching gain (throughput at the highest
concurrency, on / off). Every level is bounded by a request count and a time limit. Client
and server share this machine's cores.
"""
from __future__ import annotations

import argparse
import itertools
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import towerrec  # noqa: E402,F401  (the Keras 2 switch, before TensorFlow)
from towerrec.export.publish import provenance_run_dir  # noqa: E402
from towerrec.serving.client import RecommenderClient  # noqa: E402
from towerrec.serving.manager import versions_on_disk  # noqa: E402
from towerrec.serving.models import warmup_requests  # noqa: E402
from towerrec.serving.tensors import to_ndarray  # noqa: E402

FALLBACK = "retrieval_brute_force"
ROUND_TRIP = "gRPC round trip, no model (GetModelStatus)"
IN_PROCESS = "in-process SavedModel"
BASELINE = "in-process SavedModel, baseline"
LOAD_MARK = " #"
CONTEXT = "a 24 year old man, a technician, on Monday evening"  # 9 words


def pick_model(base: Path, wanted: str | None) -> str:
    if wanted:
        return wanted
    recommender = base / "recommender"
    return "recommender" if recommender.is_dir() and versions_on_disk(recommender) else FALLBACK


def newest_version(model_dir: Path) -> Path:
    versions = versions_on_disk(model_dir) if model_dir.is_dir() else {}
    if not versions:
        raise SystemExit(f"no versions under {model_dir}")
    return model_dir / versions[max(versions)]


def one_row_request(version_path: Path, context: Optional[str] = None
                    ) -> Dict[str, np.ndarray]:
    """The first row of the version's warm-up request (with `context` as its context)."""
    request = next(iter(warmup_requests(version_path)), None)
    if request is None:
        raise SystemExit(f"{version_path} has no warm-up request to benchmark with")
    arrays = {name: to_ndarray(tensor, name)[:1] for name, tensor in request.inputs.items()}
    if context is not None and "context_text" in arrays:
        arrays["context_text"] = np.array([context.encode()], dtype=object)
    return arrays


def encoder_call(version_path: Path, context: str) -> Optional[Callable[[], object]]:
    """The context's encoding alone, as the serving graphs do it (trimmed tokens); None
    when the export names no run folder that still holds its encoder."""
    from towerrec.towers.text_encoder import trim_tokens

    import tensorflow as tf

    run_dir = provenance_run_dir(version_path)
    if run_dir is None or not (run_dir / "encoder" / "encoder").exists():
        print(f"note: {version_path} names no run folder with its encoder; the encoder-alone "
              "row is left out")
        return None
    preprocessor = tf.saved_model.load(str(run_dir / "encoder" / "preprocessor"))
    encoder = tf.saved_model.load(str(run_dir / "encoder" / "encoder"))
    texts = tf.constant([context])

    @tf.function
    def encode(texts):
        return encoder(trim_tokens(preprocessor(texts)), training=False)

    return lambda: encode(texts)


def load_level(call: Callable[[], object], clients: int, requests: int,
               max_seconds: float, setup: Callable[[], Callable[[], object]] | None = None):
    """`clients` threads share `requests` calls (or stop at `max_seconds`); returns
    (latencies in seconds, wall seconds)."""
    latencies: List[float] = []
    lock = threading.Lock()
    left = [requests]
    ready = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker():
        own = setup() if setup else call
        own()  # a first call outside the measurement (connection, metadata)
        ready.wait()
        while time.perf_counter() < deadline[0]:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            started = time.perf_counter()
            own()
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 3600
    ready.wait()
    started = time.perf_counter()
    deadline[0] = started + max_seconds
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


def interleaved(calls: Dict[str, Callable[[], object]], requests: int, block: int
                ) -> Dict[str, tuple]:
    """{label: (latencies in seconds, seconds spent)}: the calls take turns in blocks of
    `block` consecutive calls, `requests` calls each, after one untimed block each (tracing,
    connections). Turns put the machine's drift on every call alike; blocks keep each one
    in its steady state (a one-client loop), where single turns would also charge each
    call for the caches and sleeping threads the previous one left. What a block may still
    inherit from the one before it is kept off the figures: each block starts with one
    untimed call, and the order is shuffled every turn (seeded), so that no call always
    follows the same one (in a fixed or rotated order the model's blocks always came after
    the served call's and the baseline's after the encoder's: the model measured 0.87x-0.97x
    of the same graph as the baseline)."""
    for call in calls.values():
        for _ in range(block):
            call()
    labels = list(calls)
    order = np.random.default_rng(0)
    latencies: Dict[str, List[float]] = {label: [] for label in labels}
    for _ in range(max(1, requests // block)):
        for label in order.permutation(labels):
            call = calls[label]
            call()  # untimed: what the previous block left behind
            for _ in range(block):
                started = time.perf_counter()
                call()
                latencies[label].append(time.perf_counter() - started)
    return {label: (values, sum(values)) for label, values in latencies.items()}


def loaded(version_path: Path, loads: int) -> list:
    """The version's serving function, loaded `loads` times (separate objects)."""
    import tensorflow as tf

    return [tf.saved_model.load(str(version_path)).signatures["serving_default"]
            for _ in range(loads)]


def load_calls(label: str, functions: list, tensors) -> Dict[str, Callable[[], object]]:
    """One call per load: `label` alone for one load, else `label` #1, #2, ..."""
    if len(functions) == 1:
        return {label: lambda: functions[0](**tensors)}
    return {f"{label}{LOAD_MARK}{i + 1}": (lambda f=f: f(**tensors))
            for i, f in enumerate(functions)}


def pooled_loads(timed: Dict[str, tuple]) -> Dict[str, tuple]:
    """`interleaved`'s figures with the loads of one model pooled under its label:
    {label: (latencies, seconds spent, loads)}."""
    pooled: Dict[str, tuple] = {}
    for name, (latencies, seconds) in timed.items():
        label = name.split(LOAD_MARK)[0]
        before, spent, loads = pooled.get(label, ([], 0.0, 0))
        pooled[label] = (before + latencies, spent + seconds, loads + 1)
    return pooled


def each_client_a_load(functions: list, tensors) -> Callable[[], Callable[[], object]]:
    """A `load_level` setup: each client thread calls one of the loads, in turn, so that
    at several clients every load serves its share, as the pooled one-client row has it."""
    turn, lock = itertools.count(), threading.Lock()

    def setup():
        with lock:
            function = functions[next(turn) % len(functions)]
        return lambda: function(**tensors)
    return setup


def load_spread(timed: Dict[str, tuple], label: str) -> tuple:
    """(p50 ms of each load of `label`, the slowest over the fastest)."""
    p50s = [float(np.percentile(latencies, 50)) * 1000
            for name, (latencies, _) in timed.items() if name.split(LOAD_MARK)[0] == label]
    return p50s, max(p50s) / min(p50s)


def start_server(config: Path, batching: bool, args) -> tuple:
    command = [sys.executable, "-m", "towerrec.pipelines.cli", "serve", "--model-config-file",
               str(config), "--port", "0", "--rest-api-port", "-1"]
    if batching:
        command += ["--enable-batching", "--max-batch-size", str(args.max_batch_size),
                    "--batch-timeout-micros", str(args.batch_timeout_micros)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, cwd=Path(__file__).resolve().parents[1])
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    try:
        first = lines.get(timeout=300)
    except queue.Empty:
        process.kill()
        raise SystemExit("the server did not start within 300 s") from None
    if "gRPC " not in first:
        process.kill()
        raise SystemExit(f"the server did not start: {first}")
    return process, first.split("gRPC ")[1].split(",")[0]


class Served:
    """A `towerrec serve` subprocess of one model; new_call() opens a client of its own
    (one channel per client thread) and returns its one-row predict."""

    def __init__(self, config: Path, batching: bool, args, model: str, request):
        self.config, self.batching, self.args = config, batching, args
        self.model, self.request = model, request
        self.clients: List[RecommenderClient] = []

    def __enter__(self):
        self.process, self.address = start_server(self.config, self.batching, self.args)
        return self

    def new_call(self) -> Callable[[], object]:
        client = RecommenderClient(self.address, timeout=60)
        self.clients.append(client)
        return lambda: client.predict(self.model, self.request)

    def new_status_call(self) -> Callable[[], object]:
        client = RecommenderClient(self.address, timeout=60)
        self.clients.append(client)
        return lambda: client.status(self.model)

    def __exit__(self, *exc):
        for client in self.clients:
            client.close()
        self.process.terminate()
        self.process.wait(60)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def row(label: str, clients: int, latencies: List[float], seconds: float,
        loads: int = 1) -> dict:
    """A table row; `loads`: how many loads of one SavedModel its calls went to (the
    request count is over all of them)."""
    ms = np.array(latencies) * 1000
    return {"label": label, "clients": clients, "requests": len(ms), "loads": loads,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "rps": len(ms) / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-base-path", default="models")
    parser.add_argument("--model", default=None,
                        help="default: recommender, else retrieval_brute_force")
    parser.add_argument("--clients", default="1,8,32",
                        help="concurrency levels (one client is measured in turns always)")
    parser.add_argument("--requests", type=int, default=400, help="per level")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per level")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--baseline-model-base-path", default=None,
                        help="exports to compare with in process (e.g. an earlier commit's)")
    parser.add_argument("--block", type=positive_int, default=10,
                        help="one client: consecutive calls of each path per turn")
    parser.add_argument("--loads", type=positive_int, default=2,
                        help="times each in-process SavedModel is loaded; their calls take "
                             "turns and are pooled (one load's p50 can sit up to 10%% off "
                             "another's of the same model for the whole run)")
    parser.add_argument("--context", default=CONTEXT, help="the requests' context text")
    args = parser.parse_args(argv)

    base = Path(args.model_base_path).resolve()
    model = pick_model(base, args.model)
    version_path = newest_version(base / model)
    request = one_row_request(version_path, args.context)
    levels = [int(c) for c in args.clients.split(",")]
    rows = []

    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    try:
        import scann  # noqa: F401
    except ImportError:
        pass
    tensors = {k: tf.constant(v) for k, v in request.items()}
    single = 1  # the calls that take turns: one client, serially
    functions = loaded(version_path, args.loads)
    calls = load_calls(IN_PROCESS, functions, tensors)
    encode = encoder_call(version_path, args.context)
    if encode is not None:
        calls["encoder alone (the context)"] = encode
    if args.baseline_model_base_path:
        old = newest_version(Path(args.baseline_model_base_path).resolve() / model)
        calls.update(load_calls(BASELINE, loaded(old, args.loads), tensors))
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "{model}" '
                          f'base_path: "{base / model}" }} }}')
        for batching in (False, True):
            label = "towerrec serve, batching " + ("on" if batching else "off")
            with Served(config, batching, args, model, request) as served:
                if not batching:
                    # One client: the in-process calls and the served one take turns, so
                    # that the machine's drift hits all alike (the server idles meanwhile).
                    calls[label] = served.new_call()
                    calls[ROUND_TRIP] = served.new_status_call()
                    timed = interleaved(calls, args.requests, args.block)
                    rows += [row(name, single, *figures)
                             for name, figures in pooled_loads(timed).items()]
                    spreads = {name: load_spread(timed, name)
                               for name in (IN_PROCESS, BASELINE)
                               if f"{name}{LOAD_MARK}2" in timed}
                    for clients in levels:
                        if clients != single:
                            rows.append(row(IN_PROCESS, clients, *load_level(
                                None, clients, args.requests, args.max_seconds,
                                each_client_a_load(functions, tensors)),
                                loads=min(clients, len(functions))))
                for clients in levels:
                    if clients != single or batching:  # off at 1: measured in turns
                        rows.append(row(label, clients, *load_level(
                            None, clients, args.requests, args.max_seconds,
                            served.new_call)))

    print(f"\n## {model} {version_path} ({base}), one-row requests over gRPC on "
          f"loopback, context {args.context!r}\n")
    print("| path | clients | requests | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        loads = f" ({r['loads']} loads)" if r["loads"] > 1 else ""
        print(f"| {r['label']}{loads} | {r['clients']} | {r['requests']} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['rps']:.0f} |")
    find = {(r["label"], r["clients"]): r for r in rows}
    low, high = single, max(levels)
    off = find[("towerrec serve, batching off", low)]
    base_row = find[(IN_PROCESS, low)]
    encoder = find.get(("encoder alone (the context)", low))
    if encoder:
        print(f"\nmodel over encoder: in-process p50 {base_row['p50'] / encoder['p50']:.2f}x "
              f"the encoder alone ({base_row['p50']:.2f} ms vs {encoder['p50']:.2f} ms)")
    old_row = find.get((BASELINE, low))
    if old_row:
        print(f"new over baseline: in-process p50 {old_row['p50'] / base_row['p50']:.2f}x "
              f"faster ({base_row['p50']:.2f} ms vs {old_row['p50']:.2f} ms)")
    for name, (p50s, ratio) in spreads.items():
        print(f"{name}, {len(p50s)} loads of the same SavedModel: p50 "
              f"{' / '.join(f'{p:.2f}' for p in p50s)} ms, {ratio:.2f}x apart (a ratio "
              "between models within this is noise)")
    print(f"\nserver overhead: p50 at {low} client(s) {off['p50'] / base_row['p50']:.2f}x the "
          f"in-process call ({off['p50']:.2f} ms vs {base_row['p50']:.2f} ms; an empty gRPC "
          f"round trip to the same server {find[(ROUND_TRIP, low)]['p50']:.2f} ms)")
    on_high = find[("towerrec serve, batching on", high)]
    off_high = find[("towerrec serve, batching off", high)]
    print(f"batching gain: throughput at {high} clients {on_high['rps'] / off_high['rps']:.2f}x "
          f"(on {on_high['rps']:.0f} req/s vs off {off_high['rps']:.0f} req/s; max batch "
          f"{args.max_batch_size}, timeout {args.batch_timeout_micros} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
