"""The model server: `serve(options)` loads the models and starts gRPC, REST and the
file-system poller in this process and returns the running `Server`; `run_until_signal` is
what `towerrec serve` runs (prints the ports, stops gracefully on SIGTERM or SIGINT)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import threading
from concurrent import futures
from typing import List, Optional

from towerrec.serving.batching import BatchScheduler
from towerrec.serving.grpc_service import add_services
from towerrec.serving.manager import ModelManager
from towerrec.serving.metrics import Metrics
from towerrec.serving.model_config import model_sources
from towerrec.serving.models import register_custom_ops
from towerrec.serving.options import ServerOptions
from towerrec.serving.predictor import Predictor, RequestLimits
from towerrec.serving.rest import RestServer

import grpc

log = logging.getLogger("towerrec.serving")


def serve(options: Optional[ServerOptions] = None, **overrides) -> "Server":
    """Starts a server (fields of ServerOptions as keywords, or an options object). The
    models are loaded and warmed up before the ports open, as TF Serving does; a bad base
    path or models.config raises ModelConfigError, a port in use OSError."""
    if options is None:
        options = ServerOptions(**overrides)
    elif overrides:
        options = dataclasses.replace(options, **overrides)
    register_custom_ops()
    metrics = Metrics()
    sources = functools.partial(model_sources, options.model_base_path,
                                options.model_config_file)
    sources()  # a bad base path or config fails here, with its message
    manager = ModelManager(sources, metrics)
    manager.refresh()
    batcher = None
    if options.enable_batching:
        batcher = BatchScheduler(options.max_batch_size, options.batch_timeout_micros / 1e6,
                                 options.num_batch_threads,
                                 on_batch=lambda key, n, rows: metrics.batch_run(key[0], n,
                                                                                 rows))
    predictor = Predictor(manager, batcher, RequestLimits(
        options.max_rows_per_request, options.max_values_per_row, options.max_batch_size,
        options.request_timeout_seconds))
    return Server(options, manager, predictor, metrics)


class Server:
    """A running server: `grpc_port`, `rest_port` (the real ones when 0 was asked),
    `stop()`. Also a context manager."""

    def __init__(self, options: ServerOptions, manager: ModelManager, predictor: Predictor,
                 metrics: Metrics):
        self.options = options
        self.manager = manager
        self.predictor = predictor
        self.metrics = metrics
        self.host = options.host
        self._stopped = threading.Event()
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(options.grpc_threads, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", options.max_request_bytes),
                     ("grpc.so_reuseport", 0)])  # a port in use is an error, not shared
        add_services(self._grpc, predictor, metrics)
        try:
            self.grpc_port = self._grpc.add_insecure_port(_address(self.host,
                                                                   options.grpc_port))
        except RuntimeError:
            self.grpc_port = 0
        if not self.grpc_port:
            raise OSError(f"cannot listen for gRPC on {_address(self.host, options.grpc_port)}")
        self._rest = None
        self.rest_port = None
        if options.rest_port >= 0:
            self._rest = RestServer((self.host, options.rest_port), predictor, metrics,
                                    options.max_request_bytes,
                                    options.rest_idle_timeout_seconds)
            self.rest_port = self._rest.server_address[1]
            threading.Thread(target=self._rest.serve_forever, name="rest",
                             daemon=True).start()
        self._grpc.start()
        manager.start(options.file_system_poll_wait_seconds)
        log.info("serving %s; gRPC %s, REST %s", ", ".join(manager.names()) or "no models",
                 self.grpc_address, self.rest_url or "off")

    @property
    def grpc_address(self) -> str:
        return _address(self.host, self.grpc_port)

    @property
    def rest_url(self) -> Optional[str]:
        if self.rest_port is None:
            return None
        return f"http://{_address(self.host, self.rest_port)}"

    def stop(self, grace: Optional[float] = None):
        """Stops accepting, lets requests in flight finish (up to `grace` seconds), stops."""
        if self._stopped.is_set():
            return
        grace = self.options.shutdown_grace_seconds if grace is None else grace
        self.manager.stop(timeout=grace)
        if self._rest is not None:
            self._rest.shutdown()          # no new connections
        done = self._grpc.stop(grace)      # no new RPCs; in-flight ones finish
        if self.predictor.batcher is not None:
            self.predictor.batcher.close()  # queued requests run now, without waiting
        if self._rest is not None:
            self._rest.drain(grace)
            self._rest.server_close()
        done.wait(grace)
        self._stopped.set()
        log.info("stopped")

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc):
        self.stop()


def run_until_signal(options: ServerOptions) -> int:
    """`towerrec serve`: serve until SIGTERM or SIGINT, then stop gracefully; exit code 0."""
    server = serve(options)
    print(f"serving {len(server.manager.names())} model(s) "
          f"({', '.join(server.manager.names())}); gRPC {server.grpc_address}, "
          f"REST {server.rest_url or 'off'}", flush=True)
    requested = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: requested.set())
    while not requested.wait(0.5):
        pass
    print("stopping: finishing requests in flight", flush=True)
    server.stop()
    return 0


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__: List[str] = ["serve", "Server", "run_until_signal"]
