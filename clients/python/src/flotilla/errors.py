"""Errors raised by the client and the worker runtime.

::

    FlotillaError                  .code (grpc.StatusCode or None), .message
    ├── RejectedError              the server refused the call for good; nothing changed
    │   ├── InvalidArgumentError   .field names the offending field, e.g. "tasks[0].queue"
    │   ├── NotFoundError
    │   ├── FailedPreconditionError  e.g. a stale attempt, cancelling a finished task
    │   ├── AlreadyExistsError
    │   ├── UnauthenticatedError   no token, or one the replicas do not know
    │   └── PermissionDeniedError  the token's role (or queue list) does not allow the call
    ├── UnavailableError           no replica completed the call before the deadline:
    │                              the outcome is unknown (a retry with the same keys is safe)
    └── BadResponseError           the server answered something this client cannot read
"""

from __future__ import annotations

import re
from typing import Optional

import grpc


class FlotillaError(Exception):
    """Base of every error this package raises about a call."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        #: The gRPC status code the server (or the transport) answered with, if any.
        self.code = code
        #: The status message, e.g. "invalid tasks[0].queue: must not be empty".
        self.message = message

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.code.name}: {self.message}"


class RejectedError(FlotillaError):
    """A final answer from the server: retrying the same call cannot succeed."""


class InvalidArgumentError(RejectedError):
    """Bad input; ``field`` names it (the server says "invalid FIELD: why")."""

    _PATTERN = re.compile(r"^invalid (?P<field>\S+): (?P<reason>.*)$", re.S)

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message, code)
        m = self._PATTERN.match(message)
        #: The offending field, e.g. "tasks[1].priority" (None if the message names none).
        self.field: Optional[str] = m.group("field") if m else None
        #: What is wrong with it.
        self.reason: str = m.group("reason") if m else message


class NotFoundError(RejectedError):
    pass


class FailedPreconditionError(RejectedError):
    pass


class AlreadyExistsError(RejectedError):
    pass


class UnauthenticatedError(RejectedError):
    pass


class PermissionDeniedError(RejectedError):
    pass


class UnavailableError(FlotillaError):
    """Every try failed with a retryable error until the call's deadline passed."""


class BadResponseError(FlotillaError):
    pass


_REJECTED = {
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
}


def rejected(code: grpc.StatusCode, message: str) -> RejectedError:
    """The error for a final status."""
    return _REJECTED.get(code, RejectedError)(message, code)
