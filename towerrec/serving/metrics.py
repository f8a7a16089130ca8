"""Prometheus metrics, one registry per server (so that servers in one process do not mix),
exposed by the REST port at /monitoring/prometheus/metrics as TF Serving does."""
from __future__ import annotations

import time
from contextlib import contextmanager

from towerrec.serving.errors import ServingError

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

UNKNOWN_MODEL = "_unknown"  # the label of requests for models that are not served
CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("towerrec_serving_requests", "Requests by model, protocol, "
                                "API and gRPC status code",
                                ["model", "protocol", "api", "status"], registry=r)
        self.latency = Histogram("towerrec_serving_request_latency_seconds", "Request latency "
                                 "from decoded request to encoded answer",
                                 ["model", "protocol", "api"], buckets=_LATENCY_BUCKETS,
                                 registry=r)
        self.errors = Counter("towerrec_serving_request_errors", "Failed requests by code",
                              ["model", "protocol", "api", "status"], registry=r)
        self.load_failures = Counter("towerrec_serving_load_failures", "Versions that failed "
                                     "to load or warm up", ["model"], registry=r)
        self.loaded_versions = Gauge("towerrec_serving_loaded_versions", "Versions being "
                                     "served", ["model"], registry=r)
        self.batches = Counter("towerrec_serving_batches", "Batches run (batching on)",
                               ["model"], registry=r)
        self.batch_requests = Histogram("towerrec_serving_batch_requests", "Requests merged "
                                        "into one run", ["model"], buckets=_BATCH_BUCKETS,
                                        registry=r)
        self.batch_rows = Histogram("towerrec_serving_batch_rows", "Rows (dim 0) of one run",
                                    ["model"], buckets=_BATCH_BUCKETS, registry=r)

    @contextmanager
    def observe(self, model: str, protocol: str, api: str):
        """Counts and times one request; the status is the ServingError's code, if any."""
        started = time.perf_counter()
        status = "OK"
        try:
            yield
        except ServingError as error:
            status = error.code.name
            raise
        except Exception:
            status = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            self.requests.labels(model, protocol, api, status).inc()
            self.latency.labels(model, protocol, api).observe(time.perf_counter() - started)
            if status != "OK":
                self.errors.labels(model, protocol, api, status).inc()

    def batch_run(self, model: str, requests: int, rows: int):
        self.batches.labels(model).inc()
        self.batch_requests.labels(model).observe(requests)
        self.batch_rows.labels(model).observe(rows)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
