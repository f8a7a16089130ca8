"""The one error type of the server and client: a gRPC status code and a message a person
can act on. REST maps the code to an HTTP status the way TF Serving does."""
from __future__ import annotations

import grpc

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def first_line(error: BaseException) -> str:
    """The line of a (TensorFlow) error message that says what went wrong, without TF's
    'Graph execution error' preamble, its node stack (indented lines) or the
    '[[{{node ...}}]]' and '[Op:...]' annotations."""
    text = str(getattr(error, "message", None) or error)
    preamble = ("Graph execution error:", "Detected at node", "Detected in node",
                "<stack traces unavailable>")
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith(preamble):
            continue
        return line.split(" [Op:")[0].strip() or type(error).__name__
    return type(error).__name__
