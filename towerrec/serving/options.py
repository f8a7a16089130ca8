"""Every server default, in one place (the CLI flags mirror these fields)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MIB = 1024 * 1024


@dataclass
class ServerOptions:
    """How `serving.server.serve` runs. Names follow TF Serving's flags where it has one."""

    # Every subfolder of this path is a model (its name), with integer version subfolders.
    model_base_path: Optional[str] = None
    # Or a TF Serving ModelServerConfig text proto (models.config); one of the two is needed.
    model_config_file: Optional[str] = None
    host: str = "127.0.0.1"         # loopback by default; 0.0.0.0 to listen on every address
    grpc_port: int = 8500           # 0 picks a free port (Server.grpc_port says which)
    rest_port: int = 8501           # 0 picks a free port; -1 turns the REST API off
    file_system_poll_wait_seconds: float = 1.0
    enable_batching: bool = False   # as in TF Serving, batching is opt-in
    max_batch_size: int = 32        # rows per batch
    batch_timeout_micros: int = 1000  # how long the first request of a batch waits for more
    num_batch_threads: int = 2      # batches run at the same time
    max_request_bytes: int = 16 * MIB  # larger gRPC messages / REST bodies are refused
    grpc_threads: int = 64          # concurrent gRPC calls (batching needs them in flight)
    # One request may not take the server: more rows, or a wider input row (e.g. the
    # ranker's candidates), is RESOURCE_EXHAUSTED (REST 413); a request runs in chunks of
    # max_batch_size rows, and past its deadline (or the client's, if sooner) it stops
    # between chunks with DEADLINE_EXCEEDED (REST 504).
    max_rows_per_request: int = 1024
    max_values_per_row: int = 10_000
    request_timeout_seconds: float = 30.0
    rest_idle_timeout_seconds: float = 30.0  # a REST connection silent this long is closed
    shutdown_grace_seconds: float = 10.0  # in-flight requests get this long on SIGTERM

    def __post_init__(self):
        if bool(self.model_base_path) == bool(self.model_config_file):
            raise ValueError("give exactly one of model_base_path and model_config_file")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        for name, port, lowest in (("grpc_port", self.grpc_port, 0),
                                   ("rest_port", self.rest_port, -1)):
            if not lowest <= port <= 65535:
                raise ValueError(f"{name} {port} is not a port (0-65535"
                                 f"{', or -1 for off' if lowest < 0 else ''})")
        for name in ("max_request_bytes", "max_rows_per_request", "max_values_per_row",
                     "request_timeout_seconds", "rest_idle_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
