"""benchmarks/scale.py's pure helpers: measurements from stage records, growth exponents,
the verdicts and the report (no training, no TensorFlow)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
spec = importlib.util.spec_from_file_location("scale_benchmark", PATH)
scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scale)

GB = 2 ** 30


def test_growth_exponent():
    assert scale.growth_exponent(10, 2.0, 100, 20.0) == pytest.approx(1.0)
    assert scale.growth_exponent(1e6, 10.0, 1e7, 1000.0) == pytest.approx(2.0)
    assert scale.growth_exponent(10, 0.0, 100, 1.0) is None
    assert scale.growth_exponent(10, 1.0, 10, 2.0) is None


def test_sizes_sort_small_to_large():
    assert sorted(["L", "XS", "M", "S"], key=scale.size_key) == ["XS", "S", "M", "L"]


def test_deep_merge_keeps_base_keys():
    base = {"training": {"epochs": 12, "batch_size": 1024}, "name": "a"}
    merged = scale.deep_merge(base, {"training": {"epochs": 1}, "run_dir": "r"})
    assert merged == {"training": {"epochs": 1, "batch_size": 1024}, "name": "a",
                      "run_dir": "r"}
    assert base["training"]["epochs"] == 12


def train_step(train_seconds=100.0, warm=20.0, epochs=2, examples=40_000):
    return {"step": "train", "returncode": 0, "seconds": 200.0, "max_rss_bytes": 3 * GB,
            "trained_with": {"training": {"batch_size": 512}, "towers": {"hidden_dim": 256}},
            "stages": [
                {"name": "load data and splits", "seconds": 5.0, "peak_rss_bytes": GB,
                 "interactions": 10_000, "items": 1_000},
                {"name": "encode catalogue", "seconds": 30.0, "peak_rss_bytes": 2 * GB,
                 "texts": 1_000},
                {"name": "build features", "seconds": 4.0, "peak_rss_bytes": GB,
                 "examples": examples // epochs},
                *[{"name": scale.WARM_EVALUATION, "seconds": warm / epochs,
                   "peak_rss_bytes": GB} for _ in range(epochs)],
                {"name": "train", "seconds": train_seconds, "peak_rss_bytes": 2.5 * GB,
                 "examples": examples, "epochs": epochs}]}


def test_training_epoch_excludes_the_warm_evaluations():
    measured = scale.measure(train_step(), ("train",))
    assert measured["seconds"] == pytest.approx((100.0 - 20.0) / 2)
    assert measured["peak_rss_bytes"] == 2.5 * GB


def test_a_stage_record_is_preferred_to_the_process():
    measured = scale.measure(train_step(), ("encode catalogue",))
    assert measured == {"seconds": 30.0, "peak_rss_bytes": 2 * GB, "measured": "stage",
                        "cached": False}


def test_without_its_record_a_stage_is_its_process_less_setup():
    step = {"step": "evaluate", "returncode": 0, "seconds": 50.0, "max_rss_bytes": 4 * GB,
            "stages": [{"name": "load data and splits", "seconds": 5.0},
                       {"name": "encode catalogue", "seconds": 3.0}]}
    measured = scale.measure(step, ("evaluate",))
    assert measured["seconds"] == pytest.approx(42.0)
    assert measured["peak_rss_bytes"] == 4 * GB
    assert measured["measured"].startswith("process")


def test_failed_steps_measure_nothing_and_serve_load_is_its_own():
    assert scale.measure({"step": "index", "returncode": 1, "seconds": 3.0}, ()) is None
    assert scale.measure(None, ()) is None
    serve = {"step": "serve", "returncode": 1, "load_seconds": 12.5,
             "peak_rss_load_bytes": 5 * GB}
    assert scale.measure(serve, ())["seconds"] == 12.5


def size_entry(factor: float, items: int, interactions: int, p50: float,
               users: int = 5_000, total: int = 5_000) -> dict:
    """A size whose every stage costs `factor` times the base."""
    steps = {name: {"step": name, "returncode": 0, "seconds": 10.0 * factor,
                    "max_rss_bytes": GB, "stages": []} for name in scale.STEPS}
    steps["train"] = train_step(train_seconds=100.0 * factor, warm=20.0 * factor,
                                epochs=1, examples=interactions)
    steps["encode"]["stages"] = [{"name": "encode catalogue", "seconds": 30.0 * factor,
                                  "peak_rss_bytes": 2 * GB, "texts": items}]
    steps["evaluate"]["evaluation"] = {
        "warm": {"users": users, "users_total": total, "recall_at_10": 0.2,
                 "recall_at_10_se": 0.01}}
    steps["serve"].update(load_seconds=5.0 * factor, peak_rss_load_bytes=2 * GB,
                          latency=[{"model": m, "clients": c, "requests": 100, "p50": p50,
                                    "p99": 2 * p50, "rps": 100.0}
                                   for m in scale.LATENCY_MODELS for c in (1, 8)])
    steps["scann"]["result"] = {
        "items": items, "dims": 64, "queries": 1000, "split": "warm", "mode": "tree_ah",
        "recall_at_10": 0.97, "speedup": 80.0, "scann_qps": 8000.0, "exact_qps": 100.0,
        "exact": "numpy", "blas": "openblas (1 thread)", "blas_threads": 1,
        "sweep": [{"leaves": 50, "default": True, "recall_at_10": 0.97, "qps": 8000.0,
                   "speedup": 80.0}]}
    return {"config": {"training": {"batch_size": 512}}, "steps": steps,
            "counts": {"items": items, "interactions": interactions, "users": users}}


def report(sizes: dict) -> dict:
    results = {"sizes": sizes, "rows": {n: scale.stage_rows(n, s) for n, s in sizes.items()},
               "meta": {"sizes": list(sizes), "work": "/w", "machine": "m", "started": "t"}}
    results["exponents"] = scale.exponents(results["rows"])
    results["verdicts"] = scale.judge(results)
    return results


def test_linear_growth_passes_and_the_report_says_so(tmp_path):
    sizes = {"S": size_entry(1.0, 10_000, 100_000, p50=10.0),
             "M": size_entry(10.0, 100_000, 1_000_000, p50=12.0, users=50_000, total=50_000),
             "L": size_entry(100.0, 1_000_000, 10_000_000, p50=15.0, users=10_000,
                             total=500_000)}
    # Evaluate is judged against users x items: 5x fewer users, 10x more items at L.
    sizes["L"]["steps"]["evaluate"]["seconds"] = 2 * sizes["M"]["steps"]["evaluate"]["seconds"]
    results = report(sizes)
    by_stage = {e["stage"]: e for e in results["exponents"]}
    assert (by_stage["train epoch"]["from"], by_stage["train epoch"]["to"]) == ("M", "L")
    assert by_stage["train epoch"]["exponent"] == pytest.approx(1.0)
    assert by_stage["encode"]["input"] == "texts"
    assert by_stage["evaluate"]["input"] == "user_items"
    assert by_stage["evaluate"]["n_to"] == 2 * by_stage["evaluate"]["n_from"]
    assert by_stage["evaluate"]["exponent"] == pytest.approx(1.0)
    judged = {v["text"].split(":")[0]: v["ok"] for v in results["verdicts"]}
    assert judged["L runs end to end (synth, train, evaluate, index, train-ranker, export, "
                  "serve, query)"] is True
    assert any(t.startswith("training examples/s at L") and ok for t, ok in judged.items())
    assert any(t.startswith("recommender_scann p50 at L") and ok for t, ok in judged.items())
    assert any(t.startswith("ScaNN on the trained L") and ok for t, ok in judged.items())
    assert any(t.startswith("S evaluates every held-out user") and ok
               for t, ok in judged.items())
    assert any(t.startswith("L evaluates a seeded sample") and ok for t, ok in judged.items())
    assert all(ok is not False for ok in judged.values())
    text = scale.markdown(results)
    assert "| L | train epoch |" in text and "PASS: " in text and "FAIL" not in text
    pytest.importorskip("matplotlib")
    assert scale.plot(results, tmp_path / "scale.png").stat().st_size > 1000


def test_superlinear_growth_slow_training_and_memory_fail():
    sizes = {"S": size_entry(1.0, 10_000, 100_000, p50=10.0),
             "M": size_entry(10.0, 100_000, 1_000_000, p50=12.0),
             "L": size_entry(1000.0, 1_000_000, 10_000_000, p50=30.0)}
    sizes["L"]["steps"]["train"]["stages"][-1]["peak_rss_bytes"] = 13 * GB
    results = report(sizes)
    failed = [v["text"] for v in results["verdicts"] if v["ok"] is False]
    assert any(t.startswith("peak RSS <= 12 GB") for t in failed)
    assert any(t.startswith("training examples/s at L") for t in failed)
    assert any(t.startswith("train epoch grows") and "n^2.00" in t for t in failed)
    assert any(t.startswith("recommender_scann p50 at L") for t in failed)


def test_training_rates_at_other_batch_sizes_are_not_compared():
    sizes = {"S": size_entry(1.0, 10_000, 100_000, p50=10.0),
             "L": size_entry(100.0, 1_000_000, 10_000_000, p50=10.0)}
    sizes["L"]["steps"]["train"]["trained_with"]["training"]["batch_size"] = 1024
    rate = [v for v in report(sizes)["verdicts"] if v["text"].startswith("training ex")][0]
    assert rate["ok"] is False and "512 vs 1024" in rate["text"]


def test_a_failed_step_is_reported_with_its_command():
    sizes = {"XS": size_entry(1.0, 1_000, 10_000, p50=5.0)}
    sizes["XS"]["steps"]["index"] = {"step": "index", "returncode": 2, "seconds": 1.0,
                                     "command": ["towerrec", "index"], "stderr_log": "/l"}
    sizes["XS"]["steps"]["scann"] = {"step": "scann", "returncode": None,
                                     "skipped": "index did not finish"}
    results = report(sizes)
    text = scale.markdown(results)
    assert "- XS index: exit 2: `towerrec index`; log /l" in text
    assert "- XS scann: skipped (index did not finish)" in text
    assert "FAIL: XS runs end to end" in text


def test_reap_gives_the_exit_code_and_peak_rss_of_a_child():
    import subprocess
    child = subprocess.Popen([sys.executable, "-c",
                              "b = bytearray(64 * 2**20); raise SystemExit(3)"])
    code, peak = scale.reap(child.pid)
    child.returncode = code
    assert code == 3 and peak >= 64 * 2 ** 20
    assert not math.isnan(peak)


def test_skip_existing_reuses_a_step_only_after_its_prerequisites(tmp_path):
    import argparse
    args = argparse.Namespace(work=str(tmp_path), eval_users=10_000, epochs=1,
                              ranker_epochs=1, seed=0, skip_existing=True, requests=10,
                              level_seconds=1.0, clients=[1], queries=10)
    run = scale.SizeRun("S", args)
    assert run.config["data"] == {"source": "synthetic", "size": "S",
                                  "path": str(tmp_path / "S" / "data"), "synthetic_seed": 0}
    assert run.config["evaluation"]["max_users"] is None  # S: every user
    assert scale.SizeRun("L", args).config["evaluation"]["max_users"] == 10_000
    for step in ("generate", "encode", "train", "evaluate"):
        run.save(step, {"step": step, "returncode": 0})
    assert run.finished("evaluate") is not None
    run.save("train", {"step": "train", "returncode": 0})  # trained again since
    assert run.finished("train") is not None and run.finished("evaluate") is None
    run.save("index", {"step": "index", "returncode": 1})
    assert run.finished("index") is None
    args.epochs = 2  # another config: nothing after generate is reused
    other = scale.SizeRun("S", args)
    assert other.finished("generate") is not None and other.finished("train") is None
    other.rerun.add("generate")
    assert other.finished("generate") is not None and other.finished("train") is None


def test_an_encode_from_a_kept_cache_is_reported_not_judged():
    sizes = {"M": size_entry(1.0, 100_000, 1_000_000, p50=10.0),
             "L": size_entry(1000.0, 1_000_000, 10_000_000, p50=10.0)}
    sizes["L"]["steps"]["encode"]["encoder_cache_kept"] = True
    encode = [v for v in report(sizes)["verdicts"] if v["text"].startswith("encode grows")][0]
    assert encode["ok"] is None and "encoder cache" in encode["text"]


def test_an_encode_that_encoded_nothing_is_reported_not_judged():
    sizes = {"M": size_entry(1.0, 100_000, 1_000_000, p50=10.0),
             "L": size_entry(1000.0, 1_000_000, 10_000_000, p50=10.0)}
    sizes["L"]["steps"]["encode"]["encoder_cache_kept"] = True
    sizes["L"]["steps"]["encode"]["stages"][0]["encoded"] = 0  # every text from the cache
    encode = [v for v in report(sizes)["verdicts"] if v["text"].startswith("encode grows")][0]
    assert encode["ok"] is None and "encoder cache" in encode["text"]


def test_a_resumed_encode_is_judged_at_the_rate_of_what_it_encoded():
    sizes = {"M": size_entry(1.0, 100_000, 1_000_000, p50=10.0),
             "L": size_entry(1.0, 1_000_000, 10_000_000, p50=10.0)}
    sizes["L"]["steps"]["encode"]["encoder_cache_kept"] = True
    # L encoded 100,000 of its 1,000,000 texts (the rest kept from a killed run) in 30 s:
    # all of them take 300 s at that rate, 10x M's 30 s for 10x the texts.
    sizes["L"]["steps"]["encode"]["stages"][0]["encoded"] = 100_000
    row = [r for r in report(sizes)["rows"]["L"] if r["stage"] == "encode"][0]
    assert row["seconds"] == 300.0 and "100,000 texts encoded" in row["measured"]
    encode = [v for v in report(sizes)["verdicts"] if v["text"].startswith("encode grows")][0]
    assert encode["ok"] is True and "n^1.00" in encode["text"]


def test_a_failed_stage_record_is_not_a_measurement():
    records = [{"name": "encode catalogue", "seconds": 5.0},
               {"name": "encode catalogue", "seconds": 1.0, "failed": True}]
    assert scale.last_record(records, ["encode catalogue"])["seconds"] == 5.0


def test_training_epoch_is_its_steady_rate_when_the_step_recorded_one():
    step = train_step(train_seconds=100.0, warm=20.0, epochs=2, examples=40_000)
    step["stages"][-1]["steady_examples_per_second"] = 1_000
    found = scale.measure(step, ["train"])
    assert found["seconds"] == 20.0  # 20,000 examples an epoch at 1,000 a second
    assert "steady" in found["measured"]


def test_sizes_of_an_earlier_run_are_merged_beside_this_runs(tmp_path):
    earlier = report({"S": size_entry(0.1, 10_000, 100_000, p50=10.0),
                      "M": size_entry(1.0, 100_000, 1_000_000, p50=10.0)})
    path = tmp_path / "scale.json"
    path.write_text(json.dumps(earlier))
    merged = scale.merged_sizes(str(path))
    assert set(merged) == {"S", "M"} and merged["M"]["started"] == "t"
    with pytest.raises(SystemExit, match="not a scale.json"):
        scale.merged_sizes(str(tmp_path / "missing.json"))
