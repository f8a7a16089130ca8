"""Scale benchmark: every pipeline stage at several catalogue sizes, with cost curves.

    .venv/bin/python benchmarks/scale.py --sizes S M L --work /tmp/towerrec-scale \\
        --out benchmarks/results/scale [--epochs 1] [--eval-users 10000] [--skip-existing]

For each size (synthetic catalogues, towerrec/data/synthetic.py: XS 1k items / 10k
interactions, S 10k / 100k, M 100k / 1M, L 1M / 10M) it runs, each command in its own
process: `towerrec synth` (generate), `towerrec train` (load, encode, build features, one
training epoch), `towerrec evaluate`, `towerrec index`, `towerrec train-ranker`,
`towerrec export`, then `towerrec serve` on every export (load time and server RSS) and
one-row gRPC requests to `recommender` and `recommender_scann` at 1 and 8 clients (p50,
p99). On the largest size it also compares the ScaNN index with exact search (NumPy matmul
+ top-k) on the trained embeddings, single-threaded (BLAS threads 1, stated in the output).

Per stage it reports wall time, the rate (items, texts, examples or users per second) and
the peak RSS: from the pipeline's own stage records (towerrec/stages.py, through
TOWERREC_STAGES) where the command writes one for the stage, otherwise the whole process
(its wall time less the data loading and encoding stages it records, and its peak RSS from
os.wait4, an upper bound). Between the two largest sizes run it gives each stage's growth
exponent against its input (log t2/t1 / log n2/n1), and it checks the scale issue's
thresholds, one PASS/FAIL line each.

The stage records it reads, by name: "load data and splits", "encode catalogue" (texts),
"build features" (examples), "train" (examples, epochs; less the "evaluate warm after an
epoch" records, per epoch), and where a command writes them "generate", "evaluate", "index"
or "build index", "train ranker", "export" or "export models".

Writes OUT/scale.json (everything), OUT/scale.md (the tables and verdicts) and OUT/scale.png
(log-log: time and peak RSS against interactions, one line per stage), after every size.
Command output goes to WORK/<size>/logs/; a failed command is reported (command, exit code,
the end of its stderr) and the steps that need it are skipped, the next size still runs.
Each size's run config is WORK/<size>/config.yaml: configs/synthetic-<size>.yaml where there
is one, pointed into WORK, with --epochs, the evaluation sample and --ranker-epochs. Sizes
XS, S and M evaluate every held-out user; larger ones a seeded sample of --eval-users users
per split. With --skip-existing a size's finished steps (same config) are reused, so that a
rerun after a crash does not redo hours of work; a rerun `train` then keeps the encoder's
embedding cache (its encode stage may be partly cached, the table says so), without it the
run folder starts empty.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

SIZE_ORDER = ("XS", "S", "M", "L", "XL")
# Sizes whose every held-out user is evaluated; larger ones: a seeded sample.
FULL_EVALUATION = ("XS", "S", "M")
LATENCY_MODELS = ("recommender", "recommender_scann")
# Stages the library records while loading a run (every command loads one): not the work of
# the command itself.
SETUP_STAGES = ("load data and splits", "encode catalogue")
WARM_EVALUATION = "evaluate warm after an epoch"
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
GB = 2 ** 30

# The thresholds.
MAX_RSS_GB = 12.0
MIN_SAMPLED_USERS = 10_000
MIN_TRAIN_RATE_RATIO = 0.8
MAX_EXPONENT = 1.15
MAX_SCANN_P50_RATIO = 2.0
MIN_SCANN_RECALL = 0.95
MIN_SCANN_SPEEDUP = 50.0

# step: the steps it needs (all of them finished without error).
STEPS = {
    "generate": (),
    "encode": ("generate",),
    "train": ("encode",),
    "evaluate": ("train",),
    "index": ("train",),
    "train-ranker": ("train",),
    "export": ("train", "train-ranker"),
    "serve": ("export",),
    "scann": ("index",),
}

# The table's stages: (label, step, stage record names, input of its growth exponent,
# input of its rate). A step without a record of those names: its process (less its setup
# stages); "serve load" is measured by the serve step itself.
STAGES = (
    ("generate", "generate", ("generate",), "interactions", "interactions"),
    ("load data", "train", ("load data and splits",), "interactions", "interactions"),
    ("encode", "encode", ("encode catalogue",), "texts", "texts"),
    ("build features", "train", ("build features",), "examples", "examples"),
    ("train epoch", "train", ("train",), "examples", "examples"),
    ("evaluate", "evaluate", ("evaluate",), "user_items", "users"),
    ("index build", "index", ("index", "build index"), "items", "items"),
    ("train ranker", "train-ranker", ("train ranker",), "interactions", "interactions"),
    ("export", "export", ("export", "export models"), "items", "items"),
    ("serve load", "serve", (), "items", "items"),
)
INPUT_NAMES = {"interactions": "interactions", "texts": "texts", "examples": "examples",
               "user_items": "users x items evaluated", "users": "users", "items": "items"}


# --- pure helpers (no TensorFlow; tests/test_scale_benchmark.py) ----------------------------

def growth_exponent(n1: float, t1: float, n2: float, t2: float) -> Optional[float]:
    """The exponent b of t ~ n**b through two points; None where it is not defined."""
    if min(n1, t1, n2, t2) <= 0 or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def size_key(size: str) -> Tuple[int, str]:
    """Sort key: XS < S < M < L < XL, unknown names last."""
    return (SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER), size)


def digest(*values) -> str:
    """A short stable hash of JSON-able values (a step's inputs)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, nested mappings key by key (neither is changed)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def last_record(records: Sequence[dict], names: Iterable[str]) -> Optional[dict]:
    """The last stage record named one of `names` that did not fail."""
    names = tuple(names)
    found = [r for r in records if r.get("name") in names and not r.get("failed")]
    return found[-1] if found else None


def stage_seconds(records: Sequence[dict], name: str) -> float:
    return sum(r.get("seconds", 0.0) for r in records if r.get("name") == name)


def measure(step: Optional[dict], names: Sequence[str]) -> Optional[dict]:
    """{"seconds", "peak_rss_bytes", "measured"} of a stage: its own record when the step
    wrote one, else the process (wall time less its setup stages; its peak RSS)."""
    if step and step.get("step") == "serve" and step.get("load_seconds") is not None:
        served = step.get("served_models")  # before the step chose: every model folder
        return {"seconds": step["load_seconds"],
                "peak_rss_bytes": step.get("peak_rss_load_bytes"),
                "measured": "server process, RSS sampled: " + (
                    ", ".join(served) if served else "every export"),
                "served": served}
    if not step or step.get("returncode") != 0 or step.get("step") == "serve":
        return None
    records = step.get("stages", [])
    record = last_record(records, names)
    if record is not None and record.get("name") == "train":
        epochs = max(1, int(record.get("epochs", 1)))
        if record.get("steady_examples_per_second"):
            # The step's tracing (seconds, whatever the size) is no part of its rate.
            return {"seconds": record["examples"] / epochs
                    / record["steady_examples_per_second"],
                    "peak_rss_bytes": record.get("peak_rss_bytes"),
                    "measured": "steady state: each epoch less its first 20 steps"}
        warm = stage_seconds(records, WARM_EVALUATION)
        return {"seconds": (record["seconds"] - warm) / epochs,
                "peak_rss_bytes": record.get("peak_rss_bytes"),
                "measured": "stage (less warm evaluation) / epochs"}
    if record is not None:
        encoded, texts = record.get("encoded"), record.get("texts")
        if encoded and texts and encoded < texts:
            # A resumed encode (a killed one's chunks kept): the time all texts take at the
            # rate of those this run encoded.
            return {"seconds": record["seconds"] * texts / encoded,
                    "peak_rss_bytes": record.get("peak_rss_bytes"),
                    "measured": f"stage: {encoded:,} texts encoded, {texts - encoded:,} "
                                "kept from a killed run; seconds for all at this rate"}
        # Nothing encoded: every text came from a kept cache (records from before stages
        # counted what they encoded say so through the step's encoder_cache_kept).
        cached = bool(record["name"] == "encode catalogue" and (
            encoded == 0 or (encoded is None and step.get("encoder_cache_kept"))))
        return {"seconds": record["seconds"], "peak_rss_bytes": record.get("peak_rss_bytes"),
                "measured": "stage" + (" (encoder cache of an earlier run kept)"
                                       if cached else ""), "cached": cached}
    setup = sum(stage_seconds(records, name) for name in SETUP_STAGES)
    return {"seconds": max(0.0, step["seconds"] - setup),
            "peak_rss_bytes": step.get("max_rss_bytes"),
            "measured": "process" + (" less load/encode" if setup else "")}


def size_inputs(size: dict) -> Dict[str, float]:
    """The counts a size's stages are measured against."""
    counts = dict(size.get("counts") or {})
    steps = size.get("steps") or {}
    records = (steps.get("train") or {}).get("stages", [])
    encode = last_record((steps.get("encode") or {}).get("stages", []), ["encode catalogue"])
    if encode and "texts" in encode:
        counts["texts"] = encode["texts"]
    trained = last_record(records, ["train"])
    if trained and "examples" in trained:
        counts["examples"] = trained["examples"] / max(1, int(trained.get("epochs", 1)))
    else:
        built = last_record(records, ["build features"])
        if built and "examples" in built:
            counts["examples"] = built["examples"]
    evaluation = size_evaluation(size)
    users = sum(m.get("users", 0) for m in evaluation.values())
    if users:
        counts["users"] = users
        if counts.get("items"):
            counts["user_items"] = users * counts["items"]
    return counts


def size_evaluation(size: dict) -> dict:
    """{split: metrics} of the size's `towerrec evaluate` ({} when it did not finish)."""
    step = (size.get("steps") or {}).get("evaluate") or {}
    return (step.get("evaluation") or {}) if step.get("returncode") == 0 else {}


def stage_rows(size_name: str, size: dict) -> List[dict]:
    """One row per stage of the table that the size has a measurement of."""
    inputs = size_inputs(size)
    rows = []
    for label, step, names, growth_input, rate_input in STAGES:
        found = measure((size.get("steps") or {}).get(step), names)
        if found is None:
            continue
        count = inputs.get(rate_input)
        rate = count / found["seconds"] if count and found["seconds"] > 0 else None
        rows.append({"size": size_name, "stage": label, **found, "rate": rate,
                     "rate_unit": f"{rate_input}/s", "input": growth_input,
                     "input_count": inputs.get(growth_input),
                     "interactions": inputs.get("interactions")})
    return rows


def exponents(rows_by_size: Dict[str, List[dict]]) -> List[dict]:
    """Each stage's growth exponent between the two largest sizes that measured it."""
    result = []
    for label, *_ in STAGES:
        points = [(size, r) for size in sorted(rows_by_size, key=size_key)
                  for r in rows_by_size[size] if r["stage"] == label and r["input_count"]]
        if len(points) < 2:
            continue
        (small, a), (large, b) = points[-2], points[-1]
        cached = any(r.get("cached") for r in (a, b))
        result.append({"stage": label, "input": a["input"], "from": small, "to": large,
                       "cached": cached, "comparable": a.get("served") == b.get("served"),
                       "n_from": a["input_count"], "n_to": b["input_count"],
                       "seconds_from": a["seconds"], "seconds_to": b["seconds"],
                       "exponent": growth_exponent(a["input_count"], a["seconds"],
                                                   b["input_count"], b["seconds"])})
    return result


def verdict(ok: Optional[bool], text: str) -> dict:
    """ok None: reported, not judged (e.g. a measurement is missing)."""
    return {"ok": ok, "text": text}


def latency_of(size: dict, model: str, clients: int) -> Optional[dict]:
    for row in ((size.get("steps") or {}).get("serve") or {}).get("latency", []):
        if row.get("model") == model and row.get("clients") == clients:
            return row
    return None


def judge(results: dict) -> List[dict]:
    """The issue's thresholds, checked on what this run measured (the largest size run
    plays L and the smallest S)."""
    sizes = results["sizes"]
    names = sorted(sizes, key=size_key)
    if not names:
        return []
    small, large = names[0], names[-1]
    out = []
    steps = sizes[large].get("steps") or {}
    failed = [s for s in STEPS if s != "scann" and (steps.get(s) or {}).get("returncode") != 0]
    out.append(verdict(not failed, f"{large} runs end to end (synth, train, evaluate, index, "
                       f"train-ranker, export, serve, query)" +
                       (f": not finished: {', '.join(failed)}" if failed else "")))
    peaks = [(r["peak_rss_bytes"], r["stage"]) for r in results["rows"].get(large, [])
             if r.get("peak_rss_bytes")]
    for name, step in steps.items():  # whole processes too (an upper bound of their stages)
        peak = (step or {}).get("server_max_rss_bytes" if name == "serve" else "max_rss_bytes")
        if peak and name != "scann":
            peaks.append((peak, f"process {'towerrec serve' if name == 'serve' else name}"))
    if peaks:
        worst, where = max(peaks)
        stage_peaks = [p for p, s in peaks if not s.startswith("process ")]
        ok = max(stage_peaks) <= MAX_RSS_GB * GB if stage_peaks else None
        out.append(verdict(ok, f"peak RSS <= {MAX_RSS_GB:g} GB in every stage at {large}: "
                           f"largest stage peak {max(stage_peaks, default=0) / GB:.2f} GB; "
                           f"largest process peak {worst / GB:.2f} GB ({where})"))
    out += evaluation_verdicts(sizes)
    out.append(training_rate_verdict(results, small, large))
    for e in results.get("exponents", []):
        if e["exponent"] is None:
            continue
        comparable = e.get("comparable", True)
        out.append(verdict(None if e.get("cached") or not comparable
                           else e["exponent"] <= MAX_EXPONENT,
                           f"{e['stage']} grows with {INPUT_NAMES[e['input']]} as n^"
                           f"{e['exponent']:.2f} between {e['from']} and {e['to']} "
                           f"(<= {MAX_EXPONENT})" + (
                               "; not judged: an earlier run's encoder cache was kept"
                               if e.get("cached") else "") + (
                               "; not judged: the two sizes served other sets of models"
                               if not comparable else "")))
    out += latency_verdicts(sizes, small, large)
    out.append(scann_verdict(sizes[large], large))
    return out


def evaluation_verdicts(sizes: Dict[str, dict]) -> List[dict]:
    out = []
    for name in sorted(sizes, key=size_key):
        evaluation = size_evaluation(sizes[name])
        if not evaluation:
            continue
        parts = [f"{split} {m.get('users')} of {m.get('users_total', '?')} "
                 f"(Recall@10 {m.get('recall_at_10', float('nan')):.4f} ± "
                 f"{m.get('recall_at_10_se', float('nan')):.4f})"
                 for split, m in evaluation.items()]
        sample = ((sizes[name].get("config") or {}).get("evaluation") or {}).get("max_users")
        if name in FULL_EVALUATION:
            # "users" counts those with a held-out item to find; no sample: all of them.
            out.append(verdict(sample is None, f"{name} evaluates every held-out user "
                               f"(evaluation.max_users {sample or 'null'}): " +
                               "; ".join(parts)))
        else:
            enough = all(m.get("users", 0) >= min(MIN_SAMPLED_USERS, m.get("users_total", 0))
                         and m.get("recall_at_10_se") is not None
                         for m in evaluation.values())
            out.append(verdict(enough, f"{name} evaluates a seeded sample of >= "
                               f"{MIN_SAMPLED_USERS:,} users per split (or all), with "
                               "standard errors: " + "; ".join(parts)))
    return out


def training_rate_verdict(results: dict, small: str, large: str) -> dict:
    rates = {r["size"]: r for rows in results["rows"].values() for r in rows
             if r["stage"] == "train epoch"}
    if small == large or small not in rates or large not in rates:
        return verdict(None, "training examples/s: needs two sizes with a training epoch")
    used = {s: ((results["sizes"][s].get("steps") or {}).get("train") or {}).get(
        "trained_with") or {} for s in (small, large)}
    batch = {s: (used[s].get("training") or {}).get("batch_size") for s in used}
    same = batch[small] == batch[large] and used[small].get("towers") == used[large].get(
        "towers")
    if not all(used.values()):
        settings, same = "training settings not recorded", True
    elif same:
        settings = f"batch size {batch[small]}, same towers"
    else:
        settings = f"batch size {batch[small]} vs {batch[large]}, or other towers: not comparable"
    ratio = rates[large]["rate"] / rates[small]["rate"]
    return verdict(
        ratio >= MIN_TRAIN_RATE_RATIO and same,
        f"training examples/s at {large} {rates[large]['rate']:,.0f} = {ratio:.2f}x at {small} "
        f"({rates[small]['rate']:,.0f}; >= {MIN_TRAIN_RATE_RATIO}x; {settings})")


def latency_verdicts(sizes: Dict[str, dict], small: str, large: str) -> List[dict]:
    out = []
    scann_small = latency_of(sizes[small], "recommender_scann", 1)
    scann_large = latency_of(sizes[large], "recommender_scann", 1)
    if small != large and scann_small and scann_large:
        ratio = scann_large["p50"] / scann_small["p50"]
        out.append(verdict(ratio <= MAX_SCANN_P50_RATIO,
                           f"recommender_scann p50 at {large} {scann_large['p50']:.1f} ms = "
                           f"{ratio:.2f}x at {small} ({scann_small['p50']:.1f} ms; "
                           f"<= {MAX_SCANN_P50_RATIO:g}x; 1 client)"))
    else:
        out.append(verdict(None, "recommender_scann p50: needs both the smallest and the "
                           "largest size served"))
    brute = latency_of(sizes[large], "recommender", 1)
    if brute:
        out.append(verdict(None, f"brute-force recommender p50 at {large}: {brute['p50']:.1f} "
                           f"ms (p99 {brute['p99']:.1f} ms; 1 client)"))
    return out


def scann_verdict(size: dict, name: str) -> dict:
    scann = ((size.get("steps") or {}).get("scann") or {}).get("result")
    if not scann:
        return verdict(None, f"ScaNN vs exact at {name}: not measured")
    ok = scann["recall_at_10"] >= MIN_SCANN_RECALL and scann["speedup"] >= MIN_SCANN_SPEEDUP
    if scann["mode"] == "brute_force":  # below 20k items: nothing to judge
        ok = None
    return verdict(ok, f"ScaNN on the trained {name} embeddings ({scann['items']:,} items, "
                   f"{scann['mode']}): recall@10 {scann['recall_at_10']:.3f} (>= "
                   f"{MIN_SCANN_RECALL}) at {scann['speedup']:.1f}x the QPS of exact search "
                   f"(>= {MIN_SCANN_SPEEDUP:g}x; {scann['scann_qps']:,.0f} vs "
                   f"{scann['exact_qps']:,.0f} QPS, 1 thread, BLAS threads "
                   f"{scann['blas_threads']})")


def _gb(value) -> str:
    return f"{value / GB:.2f}" if value else "-"


def _number(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict) -> str:
    """scale.md: stages, growth, serving, ScaNN, failures and verdicts."""
    meta = results["meta"]
    lines = [f"# Scale benchmark ({', '.join(meta['sizes'])})", "",
             f"{meta['machine']}. Each command in its own process; logs under "
             f"{meta['work']}/<size>/logs. {meta['started']}.", ""]
    for name, size in sorted(results["sizes"].items(), key=lambda kv: size_key(kv[0])):
        if size.get("merged_from"):
            lines += [f"{name}: measured by an earlier run (started {size.get('started')}), "
                      f"merged from {size['merged_from']}.", ""]
    lines += ["## Stages", "", "| size | stage | seconds | rate | peak RSS GB | measured |",
              "|---|---|---|---|---|---|"]
    for size in sorted(results["rows"], key=size_key):
        for r in results["rows"][size]:
            rate = f"{_number(r['rate'])} {r['rate_unit']}" if r["rate"] else "-"
            lines.append(f"| {size} | {r['stage']} | {r['seconds']:,.1f} | {rate} | "
                         f"{_gb(r['peak_rss_bytes'])} | {r['measured']} |")
    if results["exponents"]:
        lines += ["", "## Growth between the two largest sizes: t ~ n^exponent", "",
                  "| stage | input n | sizes | n | n | seconds | seconds | exponent |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in results["exponents"]:
            lines.append(f"| {e['stage']} | {INPUT_NAMES[e['input']]} | {e['from']} -> "
                         f"{e['to']} | {e['n_from']:,.0f} | "
                         f"{e['n_to']:,.0f} | {e['seconds_from']:,.1f} | "
                         f"{e['seconds_to']:,.1f} | "
                         f"{'-' if e['exponent'] is None else format(e['exponent'], '.2f')} |")
    latency = [(s, r) for s in sorted(results["sizes"], key=size_key)
               for r in ((results["sizes"][s].get("steps") or {}).get("serve") or {}).get(
                   "latency", [])]
    if latency:
        lines += ["", "## Serving: one-row gRPC requests on loopback", "",
                  "| size | model | clients | requests | p50 ms | p99 ms | req/s |",
                  "|---|---|---|---|---|---|---|"]
        for size, r in latency:
            lines.append(f"| {size} | {r['model']} | {r['clients']} | {r['requests']} | "
                         f"{r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.1f} |")
        lines.append("")
        for size in sorted(results["sizes"], key=size_key):
            serve = (results["sizes"][size].get("steps") or {}).get("serve") or {}
            if serve.get("load_seconds") is not None:
                lines.append(
                    f"- {size}: `towerrec serve` had every model AVAILABLE after "
                    f"{serve['load_seconds']:.1f} s (RSS then {_gb(serve.get('rss_loaded_bytes'))}"
                    f" GB, peak while loading {_gb(serve.get('peak_rss_load_bytes'))} GB, peak "
                    f"over its life {_gb(serve.get('server_max_rss_bytes'))} GB); client and "
                    "server share this machine's cores")
    lines += scann_lines(results)
    lines += failure_lines(results)
    lines += ["", "## Verdicts", ""]
    for v in results["verdicts"]:
        mark = {True: "PASS", False: "FAIL", None: "INFO"}[v["ok"]]
        lines.append(f"- {mark}: {v['text']}")
    return "\n".join(lines) + "\n"


def scann_lines(results: dict) -> List[str]:
    for size in sorted(results["sizes"], key=size_key, reverse=True):
        scann = ((results["sizes"][size].get("steps") or {}).get("scann") or {}).get("result")
        if not scann:
            continue
        lines = ["", f"## ScaNN against exact search at {size}", "",
                 f"{scann['items']:,} trained candidate embeddings x {scann['dims']} dims, "
                 f"{scann['queries']:,} queries of held-out users ({scann['split']}), k=10, "
                 f"one thread; exact: {scann['exact']}; BLAS: {scann['blas']}.", "",
                 "| search | leaves searched | recall@10 | QPS | x exact |",
                 "|---|---|---|---|---|",
                 f"| exact | - | 1.000 | {scann['exact_qps']:,.0f} | 1.0 |"]
        for r in scann["sweep"]:
            lines.append(f"| ScaNN {scann['mode']} | {r['leaves'] or '-'}"
                         f"{' (index default)' if r.get('default') else ''} | "
                         f"{r['recall_at_10']:.3f} | {r['qps']:,.0f} | {r['speedup']:.1f} |")
        return lines
    return []


def failure_lines(results: dict) -> List[str]:
    lines = []
    for size in sorted(results["sizes"], key=size_key):
        for name, step in (results["sizes"][size].get("steps") or {}).items():
            if step and step.get("skipped"):
                lines.append(f"- {size} {name}: skipped ({step['skipped']})")
            elif step and step.get("returncode") != 0:
                error = f" ({step['error']})" if step.get("error") else ""
                lines.append(f"- {size} {name}: exit {step['returncode']}{error}: "
                             f"`{' '.join(step['command'])}`; log {step.get('stderr_log')}")
    return ["", "## Failed steps", ""] + lines if lines else []


def plot(results: dict, path: Path) -> Optional[Path]:
    """scale.png: two log-log panels, seconds and peak RSS against interactions, one line
    per stage; None when there is nothing to draw."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, List[Tuple[float, float, float, str]]] = {}
    for size in sorted(results["rows"], key=size_key):
        for r in results["rows"][size]:
            if r["interactions"] and r["seconds"] > 0:
                series.setdefault(r["stage"], []).append(
                    (r["interactions"], r["seconds"], (r["peak_rss_bytes"] or 0) / GB, size))
    if not series:
        return None
    figure, (times, memory) = plt.subplots(1, 2, figsize=(13, 5.5))
    for stage, points in series.items():
        x = [p[0] for p in points]
        times.plot(x, [p[1] for p in points], marker="o", label=stage)
        if any(p[2] for p in points):
            memory.plot(x, [p[2] for p in points], marker="o", label=stage)
    sizes = sorted({(p[0], p[3]) for points in series.values() for p in points})
    for axis, title, unit in ((times, "wall time per stage", "seconds"),
                              (memory, "peak RSS per stage", "GB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([n for n, _ in sizes])
        axis.set_xticklabels([f"{name}\n{n:,.0f}" for n, name in sizes])
        axis.set_xlabel("size (interactions)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    memory.axhline(MAX_RSS_GB, color="red", linestyle="--", linewidth=1,
                   label=f"{MAX_RSS_GB:g} GB budget")
    times.legend(fontsize=8)
    memory.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --- running commands --------------------------------------------------------------------

def towerrec(*arguments: str) -> List[str]:
    return [sys.executable, "-m", "towerrec.pipelines.cli", *arguments]


def reap(pid: int, timeout: Optional[float] = None) -> Tuple[Optional[int], Optional[int]]:
    """Waits for child `pid`: (exit code, peak RSS in bytes from its rusage); (None, None)
    when it is still running after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.2)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_command(name: str, command: List[str], logs: Path, stages_file: Optional[Path],
                env: Optional[dict] = None) -> dict:
    """Runs `command` (output to logs/<name>.log and .err.log) and returns its exit code,
    wall seconds, peak RSS (os.wait4) and the stage records it wrote."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.log", logs / f"{name}.err.log"
    environment = dict(os.environ, **(env or {}))
    if stages_file is not None:
        stages_file.parent.mkdir(parents=True, exist_ok=True)
        stages_file.unlink(missing_ok=True)
        environment["TOWERREC_STAGES"] = str(stages_file)
    print(f"  $ {' '.join(command)}\n    (log: {out}, {err.name})", flush=True)
    started = time.perf_counter()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT,
                                   env=environment)
        try:
            code, peak = reap(process.pid)
        except BaseException:  # Ctrl-C: the child goes too
            os.kill(process.pid, signal.SIGKILL)
            reap(process.pid)
            raise
        process.returncode = code
    seconds = time.perf_counter() - started
    result = {"step": name, "command": command, "returncode": code,
              "seconds": round(seconds, 3), "max_rss_bytes": peak, "stdout_log": str(out),
              "stderr_log": str(err), "stages": read_stages(stages_file)}
    print(f"    exit {code}, {seconds:,.1f} s, peak RSS {(peak or 0) / GB:.2f} GB", flush=True)
    if code != 0:
        print(f"  FAILED: {' '.join(command)} exited {code}; last lines of {err}:\n"
              + "\n".join("    " + line for line in tail(err).splitlines()), flush=True)
    return result


def read_stages(path: Optional[Path]) -> List[dict]:
    if path is None or not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


# --- one size ------------------------------------------------------------------------------

class SizeRun:
    """The folders, config and finished steps of one size under the work folder."""

    def __init__(self, size: str, args):
        self.size, self.args = size, args
        self.folder = Path(args.work).resolve() / size
        self.data = self.folder / "data"
        self.run_dir = self.folder / "run"
        self.models = self.folder / "models"
        self.logs = self.folder / "logs"
        self.markers = self.folder / "steps"
        self.config_path = self.folder / "config.yaml"
        self.config = self.make_config()
        self.rerun: set = set()

    def make_config(self) -> dict:
        """configs/synthetic-<size>.yaml where there is one, pointed into the work folder,
        with this benchmark's epochs, evaluation sample and ranker bounds."""
        base: dict = {}
        repo_config = ROOT / "configs" / f"synthetic-{self.size.lower()}.yaml"
        if repo_config.exists():
            base = yaml.safe_load(repo_config.read_text()) or {}
        sample = None if (self.size in FULL_EVALUATION or not self.args.eval_users) \
            else self.args.eval_users
        return deep_merge(base, {
            "name": f"synthetic-{self.size}", "run_dir": str(self.run_dir),
            "data": {"source": "synthetic", "size": self.size, "path": str(self.data),
                     "synthetic_seed": self.args.seed},
            "training": {"epochs": self.args.epochs},
            "evaluation": {"max_users": sample},
            "ranker": {"epochs": self.args.ranker_epochs}})

    def digest(self, step: str) -> str:
        if step == "generate":
            return digest(step, self.size, self.args.seed)
        extra = ((self.args.requests, self.args.level_seconds, self.args.clients,
                  self.args.serve_models)
                 if step == "serve" else self.args.queries if step == "scann" else None)
        return digest(step, self.config, extra)

    def marker(self, step: str) -> Path:
        return self.markers / f"{step}.json"

    def finished(self, step: str) -> Optional[dict]:
        """The step's saved result when it may be reused (--skip-existing, same inputs,
        finished without error, and none of the steps it needs was run again)."""
        if not self.args.skip_existing or any(d in self.rerun for d in STEPS[step]):
            return None
        try:
            saved = json.loads(self.marker(step).read_text())
        except (OSError, ValueError):
            return None
        if saved.get("returncode") != 0 or saved.get("digest") != self.digest(step):
            return None
        for need in STEPS[step]:  # a prerequisite run again since (in an earlier run)
            before = read_json(self.marker(need)) or {}
            if before.get("finished", math.inf) > saved.get("finished", 0):
                return None
        return saved

    def save(self, step: str, result: dict) -> None:
        self.markers.mkdir(parents=True, exist_ok=True)
        result["digest"] = self.digest(step)
        result["finished"] = time.time()
        self.marker(step).write_text(json.dumps(result, indent=2))


def step_command(run: SizeRun, step: str) -> List[str]:
    config = str(run.config_path)
    this = [sys.executable, str(Path(__file__).resolve())]
    return {
        "generate": lambda: towerrec("synth", "--size", run.size, "--seed",
                                     str(run.args.seed), "--out", str(run.data)),
        "encode": lambda: towerrec("encode", "--config", config),
        "train": lambda: towerrec("train", "--config", config),
        "evaluate": lambda: towerrec("evaluate", "--config", config),
        "index": lambda: towerrec("index", "--config", config),
        "train-ranker": lambda: towerrec("train-ranker", "--config", config),
        "export": lambda: towerrec("export", "--config", config, "--model-base-path",
                                   str(run.models)),
        "serve": lambda: this + ["--serve-check", str(run.models), "--result",
                                 str(run.folder / "serve-result.json"), "--requests",
                                 str(run.args.requests), "--level-seconds",
                                 str(run.args.level_seconds), "--clients",
                                 *map(str, run.args.clients), "--server-log",
                                 str(run.logs / "server.log"), "--serve-models",
                                 *run.args.serve_models],
        "scann": lambda: this + ["--scann-check", config, "--result",
                                 str(run.folder / "scann-result.json"), "--queries",
                                 str(run.args.queries)],
    }[step]()


def before_step(run: SizeRun, step: str) -> None:
    """Clears what a step writes, so that it is measured from scratch."""
    if step == "encode" and not run.args.skip_existing:
        shutil.rmtree(run.run_dir, ignore_errors=True)  # the encoder cache too
    if step == "train":  # all but the encoder (and its cache, the encode step's work)
        for path in (run.run_dir.iterdir() if run.run_dir.exists() else ()):
            if path.name != "encoder":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if step == "train-ranker":  # its list-making retrieval model too (else reused)
        shutil.rmtree(run.run_dir / "ranker", ignore_errors=True)
    if step == "export":
        shutil.rmtree(run.models, ignore_errors=True)
    for name in ("serve-result.json", "scann-result.json"):
        if step == name.split("-")[0]:
            (run.folder / name).unlink(missing_ok=True)


def attach_result(run: SizeRun, step: str, result: dict) -> None:
    """What a step wrote that the report needs, into its step record: the metrics of
    `evaluate`, the settings of `index`, the JSON results of the worker steps."""
    if step == "evaluate":
        result["evaluation"] = read_json(run.run_dir / "evaluation.json")
    if step == "train":  # the settings it trained with, defaults included
        saved = read_json(run.run_dir / "model" / "config.json") or {}
        result["trained_with"] = {k: saved.get(k) for k in ("training", "towers", "encoder")}
    if step == "index":
        result["index_settings"] = read_json(run.run_dir / "index" / "settings.json")
    files = {"serve": "serve-result.json", "scann": "scann-result.json"}
    if step not in files or result["returncode"] is None:
        return
    try:
        found = json.loads((run.folder / files[step]).read_text())
    except (OSError, ValueError):
        if result["returncode"] == 0:
            result["returncode"] = 1
            result["error"] = f"no {files[step]} written"
        return
    if step == "serve":
        result.update(found)
    else:
        result["result"] = found


def run_size(size: str, args, steps: Sequence[str]) -> Dict[str, dict]:
    """Runs (or reuses) `steps` of one size in order; a step whose prerequisites failed is
    skipped. Returns {step: result}."""
    run = SizeRun(size, args)
    run.folder.mkdir(parents=True, exist_ok=True)
    run.config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    print(f"\n== size {size}: work folder {run.folder}, config {run.config_path}", flush=True)
    results: Dict[str, dict] = {}
    for step in steps:
        missing = [d for d in STEPS[step] if d in steps and
                   (results.get(d) or {}).get("returncode") != 0]
        if missing:
            print(f"- {step}: skipped ({', '.join(missing)} did not finish)", flush=True)
            results[step] = {"step": step, "returncode": None,
                             "skipped": f"{', '.join(missing)} did not finish"}
            continue
        saved = run.finished(step)
        if saved is not None:
            print(f"- {step}: reusing the finished step ({run.marker(step)})", flush=True)
            results[step] = saved
            continue
        print(f"- {step}", flush=True)
        run.rerun.add(step)
        before_step(run, step)
        env = single_thread_env() if step == "scann" else None
        cache_kept = step == "encode" and any(
            (run.run_dir / "encoder").rglob("embedding_cache*"))
        result = run_command(step, step_command(run, step), run.logs,
                             run.folder / "stages" / f"{step}.jsonl", env)
        result["encoder_cache_kept"] = cache_kept
        attach_result(run, step, result)
        run.save(step, result)
        results[step] = result
    return results


def single_thread_env() -> Dict[str, str]:
    return {name: "1" for name in BLAS_VARIABLES}


def collect(done: Dict[str, Dict[str, dict]], args) -> dict:
    """The report's data: {size: {step: result}} of this run (run or reused steps)."""
    report = {"sizes": {}, "rows": {}}
    entries = {size: {"config": SizeRun(size, args).config, "steps": steps,
                      "counts": synthetic_counts(SizeRun(size, args).data)}
               for size, steps in done.items()}
    for size, entry in merged_sizes(args.merge).items():
        entries.setdefault(size, {**entry, "merged_from": args.merge})
    for size in sorted(entries, key=size_key):
        report["sizes"][size] = entries[size]
        report["rows"][size] = stage_rows(size, entries[size])
    report["exponents"] = exponents(report["rows"])
    return report


def merged_sizes(path: Optional[str]) -> Dict[str, dict]:
    """The sizes measured in an earlier run's scale.json (--merge): a long size can be
    run on its own and reported beside the others."""
    if not path:
        return {}
    earlier = read_json(Path(path))
    if not earlier or not isinstance(earlier.get("sizes"), dict):
        raise SystemExit(f"--merge {path}: not a scale.json of this benchmark")
    started = (earlier.get("meta") or {}).get("started")
    return {name: {**entry, "started": entry.get("started", started)}
            for name, entry in earlier["sizes"].items()}


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def synthetic_counts(data: Path) -> Dict[str, int]:
    metadata = read_json(data / "synthetic.json") or {}
    return {k: metadata[k] for k in ("items", "interactions", "users") if k in metadata}


def machine() -> str:
    try:
        import psutil
        memory = f", {psutil.virtual_memory().total / GB:.0f} GB RAM"
    except ImportError:
        memory = ""
    return f"{platform.node()}: {os.cpu_count()} CPU cores{memory}, Python " \
           f"{platform.python_version()}"


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["verdicts"] = judge(results)
    (out / "scale.json").write_text(json.dumps(results, indent=2, default=str))
    text = markdown(results)
    try:
        drawn = plot(results, out / "scale.png")
    except Exception as error:  # the tables matter more than the picture
        drawn = None
        print(f"plot failed: {error}", file=sys.stderr)
    if drawn:
        text += f"\n![time and peak RSS against size]({drawn.name})\n"
    (out / "scale.md").write_text(text)
    print("\n" + text)
    print(f"written: {out / 'scale.json'}, {out / 'scale.md'}"
          + (f", {drawn}" if drawn else ""))


# --- workers (run as their own processes) --------------------------------------------------

def serve_check(base: Path, result_path: Path, clients: Sequence[int], requests: int,
                level_seconds: float, server_log: Path, start_timeout: float,
                models: Sequence[str]) -> int:
    """Starts `towerrec serve` on `models` under `base` ("all": every model folder), times
    it until every model is AVAILABLE (sampling the server's RSS), then measures one-row
    gRPC requests to the recommenders at each client count; stops the server. Writes the
    JSON result."""
    import psutil

    if list(models) == ["all"]:
        models = sorted(p.name for p in base.iterdir() if p.is_dir()
                        and not p.name.startswith("."))
    result: dict = {"latency": [], "errors": [], "served_models": list(models)}
    timed: List[str] = []
    server_log.parent.mkdir(parents=True, exist_ok=True)
    config = result_path.with_name("models.config")  # what a deployment lists
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{m}" base_path: "{base / m}" model_platform: "tensorflow" }}\n'
        for m in models) + "}\n")
    with open(server_log, "a") as log:  # O_APPEND: the server's stderr shares the file
        started = time.perf_counter()
        process = subprocess.Popen(
            towerrec("serve", "--model-config-file", str(config), "--port", "0",
                     "--rest-api-port", "-1", "--file-system-poll-wait-seconds", "0"),
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        sampler = RssSampler(psutil.Process(process.pid))
        try:
            address = wait_until_serving(process, log, start_timeout)
            states = model_states(address, models)
            result["load_seconds"] = round(time.perf_counter() - started, 3)
            result["peak_rss_load_bytes"] = sampler.peak
            result["rss_loaded_bytes"] = sampler.now()
            result["models"] = states
            print(f"serving after {result['load_seconds']:.1f} s, RSS "
                  f"{result['rss_loaded_bytes'] / GB:.2f} GB: {states}", flush=True)
            if any(state != "AVAILABLE" for state in states.values()):
                result["errors"].append(f"not every model is AVAILABLE: {states}")
            timed = [m for m in LATENCY_MODELS if m in models]
            if not timed:
                print("no recommender among the served models: latency not measured")
            for model in timed:
                if states.get(model) == "AVAILABLE":
                    result["latency"] += measure_latency(address, base, model, clients,
                                                         requests, level_seconds)
                else:
                    result["errors"].append(f"{model} is not served")
            result["peak_rss_bytes"] = sampler.peak
        except Exception as error:
            result["errors"].append(f"{type(error).__name__}: {error}")
        finally:
            sampler.stop()
            # os.kill, not Popen.send_signal: that polls, and would reap the rusage away.
            os.kill(process.pid, signal.SIGTERM)
            code, peak = reap(process.pid, timeout=120)
            if code is None:
                os.kill(process.pid, signal.SIGKILL)
                code, peak = reap(process.pid)
            process.returncode = code
            result.update(server_exit=code, server_max_rss_bytes=peak)
    result_path.write_text(json.dumps(result, indent=2))
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    missing = "load_seconds" not in result or (timed and not result["latency"])
    return 1 if missing or result["errors"] else 0


class RssSampler(threading.Thread):
    """The peak RSS of a process, sampled every `interval` seconds until stop()."""

    def __init__(self, process, interval: float = 0.1):
        super().__init__(daemon=True)
        self.process, self.interval, self.peak = process, interval, 0
        self._done = threading.Event()
        self.start()

    def now(self) -> int:
        try:
            return self.process.memory_info().rss
        except Exception:  # gone
            return 0

    def run(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def stop(self):
        self._done.set()
        self.join()


def wait_until_serving(process, log, timeout: float) -> str:
    """The gRPC address from the server's first line (printed once every model is loaded);
    its later output goes on to the log."""
    import queue
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def copy():
        for line in process.stdout:
            log.write(line)
            log.flush()
            lines.put(line)
        lines.put(None)
    threading.Thread(target=copy, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:  # not reaped here: the caller wants its rusage
            raise RuntimeError(f"the server exited before serving; see {log.name}")
        if "gRPC " in line:
            return line.split("gRPC ")[1].split(",")[0].strip()
    raise TimeoutError(f"the server did not serve within {timeout:.0f} s")


def model_states(address: str, models: Sequence[str]) -> Dict[str, str]:
    """{model: state of its newest version}."""
    from towerrec.serving.client import RecommenderClient
    from towerrec.serving.errors import ServingError

    states = {}
    with RecommenderClient(address, timeout=60) as client:
        for model in models:
            try:
                versions = client.status(model)
                states[model] = max(versions, key=lambda v: v["version"])["state"] \
                    if versions else "NONE"
            except ServingError as error:
                states[model] = f"error: {error}"
    return states


def measure_latency(address: str, base: Path, model: str, clients: Sequence[int],
                    requests: int, level_seconds: float) -> List[dict]:
    """p50/p99 and req/s of one-row requests (the version's warm-up request's first row),
    one gRPC channel per client thread (benchmarks/serving.py's load generator)."""
    sys.path.insert(0, str(BENCHMARKS))
    from towerrec.serving.client import RecommenderClient
    from towerrec.serving.manager import versions_on_disk

    from serving import load_level, one_row_request, row

    versions = versions_on_disk(base / model)
    request = one_row_request(base / model / versions[max(versions)])
    with RecommenderClient(address, timeout=60) as probe:  # fails here, not in a thread
        probe.predict(model, request)
    rows = []
    for count in clients:
        opened: List[RecommenderClient] = []

        def setup(opened=opened):
            client = RecommenderClient(address, timeout=60)
            opened.append(client)
            return lambda: client.predict(model, request)
        try:
            latencies, seconds = load_level(None, count, requests, level_seconds, setup)
        finally:
            for client in opened:
                client.close()
        measured = row(model, count, latencies, seconds)
        measured["model"] = model
        rows.append(measured)
        print(f"{model} at {count} client(s): p50 {measured['p50']:.2f} ms, p99 "
              f"{measured['p99']:.2f} ms, {measured['rps']:.1f} req/s "
              f"({measured['requests']} requests)", flush=True)
    return rows


def scann_check(config_path: str, result_path: Path, num_queries: int) -> int:
    """ScaNN (the index `towerrec index` built) against exact search on the trained
    embeddings, queries of held-out users. Writes the JSON result."""
    import towerrec  # noqa: F401  (before TensorFlow)
    from towerrec.config import load_config
    from towerrec.evaluation.evaluate import query_embeddings, split_queries
    from towerrec.export.index import INDEX_DIR, Index
    from towerrec.training.prior import served_queries
    from towerrec.training.run import load_run

    import numpy as np

    config = load_config(config_path, {"evaluation.max_users": num_queries})
    run = load_run(config)
    split = "warm" if "warm" in run.splits else next(s for s in run.splits if s != "train")
    asked = split_queries(run, split)
    # The index holds the served vectors (with the item prior's column when the run has one).
    queries = served_queries(run, query_embeddings(run, asked),
                             (asked.history != "").any(axis=1))[:num_queries]
    result = {"split": split, **compare_with_exact(Index(config.run_path / INDEX_DIR),
                                                   np.ascontiguousarray(queries, np.float32))}
    result_path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def compare_with_exact(index, queries) -> dict:
    """Recall@10 against exact search and QPS over exact search's, of a built
    towerrec.export.index.Index at its own setting and a few around it (leaves searched);
    everything on one thread (BLAS included)."""
    from towerrec.export.index import exact_top_k, recall_against_exact

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits
    sys.path.insert(0, str(BENCHMARKS))
    from index import K, timed

    items = index.embeddings
    with threadpool_limits(1):
        blas = [f"{p['internal_api']} {p.get('version')} ({p['num_threads']} thread)"
                for p in threadpool_info()]
        (exact, _), exact_seconds = timed(lambda: exact_top_k(queries, items, K), repeats=2)
        default = index.settings.get("num_leaves_to_search")
        leaves = [None] if default is None else sorted(
            {default, max(1, default // 2), default * 2, default * 4})
        sweep = []
        for count in leaves:  # Index.rows searches on one thread
            (found, _), seconds = timed(lambda count=count: index.rows(
                queries, K, leaves_to_search=count), repeats=2)
            sweep.append({"leaves": count, "default": count == default,
                          "recall_at_10": recall_against_exact(np.asarray(found), exact),
                          "qps": len(queries) / seconds})
    exact_qps = len(queries) / exact_seconds
    for r in sweep:
        r["speedup"] = r["qps"] / exact_qps
    chosen = next(r for r in sweep if r["default"] or r["leaves"] is None)
    return {"items": int(len(items)), "dims": int(items.shape[1]),
            "queries": int(len(queries)), "mode": index.settings["mode"],
            "settings": index.settings, "exact_qps": exact_qps,
            "exact": "NumPy float32 matmul + partial sort (towerrec.evaluation.topk), "
                     "blocks of queries",
            "blas": "; ".join(blas) or "none found", "blas_threads": 1,
            "scann_qps": chosen["qps"], "recall_at_10": chosen["recall_at_10"],
            "speedup": chosen["speedup"], "sweep": sweep}


# --- main ----------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "M", "L"],
                        help="synthetic sizes (XS, S, M, L), run smallest first")
    parser.add_argument("--work", default="/tmp/towerrec-scale",
                        help="data, runs, exports, logs and step results per size")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"),
                        help="folder for scale.json, scale.md and scale.png")
    parser.add_argument("--merge", default=None, metavar="SCALE_JSON",
                        help="an earlier run's scale.json: its sizes that this run does not "
                             "run are reported beside this run's (marked as merged)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs")
    parser.add_argument("--eval-users", type=int, default=10_000,
                        help="users evaluated per split above M (0: all)")
    parser.add_argument("--ranker-epochs", type=int, default=1,
                        help="ranker epochs (kept small: the ranker is not what scales)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                        help="concurrent gRPC clients per latency level")
    parser.add_argument("--requests", type=int, default=300, help="requests per level")
    parser.add_argument("--level-seconds", type=float, default=30.0,
                        help="time limit per latency level")
    parser.add_argument("--queries", type=int, default=1000,
                        help="queries of the ScaNN-vs-exact comparison")
    parser.add_argument("--start-timeout", type=float, default=3600.0,
                        help="seconds the server may take to load every model")
    parser.add_argument("--serve-models", nargs="+", default=list(LATENCY_MODELS),
                        help="the models `towerrec serve` loads in the serve step (what a "
                             "deployment lists in models.config), or 'all' (at L every "
                             "export holds its own catalogue tables, several GB each)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="reuse each size's finished steps (same config)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS),
                        help=argparse.SUPPRESS)
    # Worker modes: this script runs them as its own subprocesses.
    parser.add_argument("--serve-check", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scann-check", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--server-log", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = sorted(dict.fromkeys(args.sizes), key=size_key)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve_check:
        return serve_check(Path(args.serve_check), Path(args.result), args.clients,
                           args.requests, args.level_seconds, Path(args.server_log),
                           args.start_timeout, args.serve_models)
    if args.scann_check:
        return scann_check(args.scann_check, Path(args.result), args.queries)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(args.out)
    largest = args.sizes[-1]
    done: Dict[str, Dict[str, dict]] = {}
    for size in args.sizes:
        steps = [s for s in args.steps if s != "scann" or size == largest]
        done[size] = run_size(size, args, steps)
        results = collect(done, args)
        results["meta"] = {"sizes": list(results["sizes"]), "work": str(Path(args.work).resolve()),
                           "machine": machine(), "started": started,
                           "arguments": vars(args)}
        write_report(results, out)  # after every size: a crash keeps what was measured
    verdicts = results["verdicts"]
    return 1 if any(v["ok"] is False for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
