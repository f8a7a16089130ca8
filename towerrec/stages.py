"""Wall time and peak memory per pipeline stage, for the logs and for benchmarks/scale.py.

    with stage("train", examples=n) as record:
        ...
    # logs "stage train: 71.3 s, 898,560 examples (12,603/s), peak RSS 3.41 GB"

The peak is the largest resident set size sampled (every 50 ms, from /proc) while the stage
ran, so stages run one after the other in one process each get their own peak. With the
environment variable TOWERREC_STAGES set to a file, every stage also appends one JSON line
to it (name, seconds, peak_rss_bytes, counts), which the scale benchmark reads.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import threading
import time
from typing import Dict, Iterator, Optional

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows
STAGES_FILE = "TOWERREC_STAGES"
# Counts reported with a rate (per second of the stage).
RATES = ("examples", "texts", "interactions", "items", "users", "rows")


def rss_bytes() -> int:
    """This process's resident set size now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Peak(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.peak = interval, rss_bytes()
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_bytes())


@contextlib.contextmanager
def stage(name: str, interval: float = 0.05, **counts: int) -> Iterator[Dict]:
    """Measures the block: yields a dict to which the block may add counts (e.g.
    `s["examples"] = n`); on exit adds seconds and peak_rss_bytes and reports them."""
    record: Dict = {"name": name, **counts}
    sampler = _Peak(interval)
    sampler.start()
    started = time.perf_counter()
    try:
        yield record
    except BaseException:
        record["failed"] = True
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["peak_rss_bytes"] = sampler.stop()
        record["max_rss_bytes_process"] = resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024
        if not record.get("failed"):
            log.info(describe(record))
        _append(record)


def describe(record: Dict) -> str:
    parts = [f"{record['seconds']:.1f} s"]
    for key, value in record.items():
        if key in ("name", "seconds", "peak_rss_bytes", "max_rss_bytes_process", "failed"):
            continue
        if key == "steady_examples_per_second":
            parts.append(f"steady state {value:,} examples/s")
            continue
        rate = (f" ({value / record['seconds']:,.0f}/s)"
                if key in RATES and record["seconds"] > 0 else "")
        parts.append(f"{value:,} {key}{rate}")
    parts.append(f"peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GB")
    return f"stage {record['name']}: " + ", ".join(parts)


def _append(record: Dict, path: Optional[str] = None) -> None:
    path = path or os.environ.get(STAGES_FILE)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
