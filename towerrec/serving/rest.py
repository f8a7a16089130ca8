"""TF Serving's REST API on its own port (standard library ThreadingHTTPServer):

    POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict   -> predictions / outputs
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            -> model version status
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   -> signature_def
    GET  /monitoring/prometheus/metrics

Errors are `{"error": "..."}` with 400 (bad request), 404 (unknown model, version or path),
405, 408 (a body that stalls past the idle timeout), 411, 413 (a body or a request over a
limit), 504 (past the request deadline), or the standard library's own 414/431/501; the
server never sends a traceback. Connections are HTTP/1.1 keep-alive, closed after
`idle_timeout` seconds without a byte.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple

from towerrec.serving.errors import ServingError, invalid, not_found
from towerrec.serving.metrics import CONTENT_TYPE, UNKNOWN_MODEL, Metrics
from towerrec.serving.predictor import Predictor
from towerrec.serving.responses import SIGNATURE_DEF, metadata_response, status_response
from towerrec.serving.rest_json import parse_request, signature_name, to_json

import grpc
from google.protobuf import json_format

log = logging.getLogger("towerrec.serving")
METRICS_PATH = "/monitoring/prometheus/metrics"
_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                         r"(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
                         r"(?P<verb>:predict|:classify|:regress|/metadata)?$")


def _as_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True  # shutdown waits for requests in flight (counted), not idle sockets
    request_queue_size = 1024  # listen() backlog: bursts queue instead of being refused

    def __init__(self, address: Tuple[str, int], predictor: Predictor, metrics: Metrics,
                 max_request_bytes: int, idle_timeout: float = 30.0):
        self.predictor = predictor
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.idle_timeout = idle_timeout  # per socket read: an idle or stalled client is let go
        self.stopping = False  # once set, each connection closes after its response
        self._in_flight = 0
        self._idle = threading.Condition()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, delta: int):
        with self._idle:
            self._in_flight += delta
            self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Waits until no request is in flight (after shutdown() stopped accepting): every
        response begun is written whole."""
        self.stopping = True
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)


class _Handler(BaseHTTPRequestHandler):
    server: RestServer
    server_version = "towerrec-serving"
    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share one connection

    def setup(self):
        self.timeout = self.server.idle_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_HEAD(self):  # GET's status and headers, no body
        self._serve("GET")

    def _not_allowed(self):
        self._serve(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def log_message(self, format, *args):  # one line per request is noise at this rate
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (414, 431, 501, a malformed request line)
        as JSON like every other error, not its HTML page."""
        self.close_connection = True
        self._send(code, _error(message or explain or self.responses.get(code, ("",))[0]),
                   None)

    def _serve(self, method: str):
        self.server.track(+1)
        # A body left unread would be parsed as the next request on this connection.
        self._body_read = ("Transfer-Encoding" not in self.headers and
                           self.headers.get("Content-Length", "0").strip() in ("", "0"))
        try:
            try:
                status, body, content_type = self._route(method)
            except ServingError as error:
                status, body, content_type = error.http_status, _error(error.message), None
            except Exception:
                log.exception("REST %s %s failed", method, self.path)
                status, body, content_type = (500, _error("internal error (see the server "
                                                          "log)"), None)
            if not self._body_read or self.server.stopping:
                self.close_connection = True  # an unread body would be read as a request
            self._send(status, body, content_type)
        finally:
            self.server.track(-1)  # after the response is written: a stop waits for it

    def _route(self, method: str):
        path = self.path.split("?", 1)[0]
        if path == METRICS_PATH:
            self._method(method, "GET")
            return 200, self.server.metrics.exposition(), CONTENT_TYPE
        match = _MODEL_PATH.match(path)
        if not match:
            raise not_found(f"no such path: {path} (expected /v1/models/<name>[/versions/<v>]"
                            f"[:predict | /metadata])")
        name, verb = match["name"], match["verb"] or ""
        version = int(match["version"]) if match["version"] else None
        label = match["label"]
        if verb in (":classify", ":regress"):
            raise invalid(f"{verb[1:]} is not supported; use :predict")
        api = {"": "status", "/metadata": "metadata", ":predict": "predict"}[verb]
        self._method(method, "POST" if api == "predict" else "GET")
        model = name if self.server.predictor.manager.knows(name) else UNKNOWN_MODEL
        with self.server.metrics.observe(model, "rest", api):
            return 200, getattr(self, f"_{api}")(name, version, label), None

    def _method(self, method: str, allowed: str):
        if method != allowed:
            raise _HttpError(405, f"use {allowed} for {self.path.split('?')[0]}")

    def _status(self, name, version, label) -> bytes:
        manager = self.server.predictor.manager
        if label:
            version = manager.get(name, None, label).version
        return _dump(_as_json(status_response(manager.status(name, version))))

    def _metadata(self, name, version, label) -> bytes:
        servable = self.server.predictor.manager.get(name, version, label)
        response = metadata_response(servable, [SIGNATURE_DEF])
        return _dump({"model_spec": _as_json(response.model_spec),
                      "metadata": {SIGNATURE_DEF: _as_json(servable.signature_defs)}})

    def _predict(self, name, version, label) -> bytes:
        body = self._json_body()
        try:
            wanted = signature_name(body)
        except ValueError as e:
            raise invalid(str(e)) from None
        servable, signature = self.server.predictor.resolve(name, version, label, wanted)
        try:
            form, arrays = parse_request(body, signature.inputs)
        except ValueError as e:
            raise invalid(str(e)) from None
        outputs = self.server.predictor.predict(servable, signature, arrays)
        try:
            return _dump(to_json(outputs, form))
        except ValueError as e:
            raise invalid(str(e)) from None

    def _json_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            raise _HttpError(411, "a Content-Length header is needed")
        if not length.strip().isdigit() or not length.isascii():
            raise invalid(f"bad Content-Length: {length!r}")
        if int(length) > self.server.max_request_bytes:
            self._discard(int(length))
            raise _HttpError(413, f"the request body has {int(length)} bytes, more than the "
                                  f"limit of {self.server.max_request_bytes}")
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError:
            raise _HttpError(408, f"the request body did not arrive within "
                                  f"{self.server.idle_timeout:g} s") from None
        if len(raw) < int(length):
            raise invalid(f"the body ended after {len(raw)} of {int(length)} bytes")
        self._body_read = True
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise invalid(f"the body is not JSON: {str(e)[:200]}") from None

    def _discard(self, length: int):
        """Reads an oversized body away (up to a bound), so that the client, still sending,
        gets the 413 rather than a reset connection."""
        self.close_connection = True
        if length <= 8 * self.server.max_request_bytes:
            try:
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 20))
                    if not chunk:
                        break
                    length -= len(chunk)
            except OSError:  # the client stalled past the idle timeout, or went away
                pass

    def _send(self, status: int, body: bytes, content_type: Optional[str]):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type or "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:  # the client went away (or stopped reading past the timeout)
            self.close_connection = True


class _HttpError(ServingError):
    """An HTTP-only condition (405, 411, 413 before the body is read)."""

    def __init__(self, http_status: int, message: str):
        code = {413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                408: grpc.StatusCode.DEADLINE_EXCEEDED}.get(http_status,
                                                          grpc.StatusCode.INVALID_ARGUMENT)
        super().__init__(code, message)
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status


def _error(message: str) -> bytes:
    return _dump({"error": message})


def _dump(value) -> bytes:
    return json.dumps(value).encode("utf-8")
