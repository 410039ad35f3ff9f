"""One error tree for every service, mapped to HTTP in one place (``services/common/http.py``).

Third-party errors are translated where they enter (``raise InvalidInput(...) from e``), so
logic modules never raise HTTPException and routers never re-check returned error values.
"""

from __future__ import annotations


class HsigError(Exception):
    """Base of every error this project raises on purpose."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(HsigError, ValueError):
    """The caller sent something wrong; fix the input and retry. HTTP 400 / CLI exit 2."""

    status_code = 400
    error_type = "invalid_request_error"


class NotFound(HsigError, LookupError):
    """The named thing does not exist; the message says what does. HTTP 404."""

    status_code = 404
    error_type = "not_found_error"


class Conflict(HsigError):
    """The request clashes with stored state (a name taken, a job already finished). HTTP 409."""

    status_code = 409
    error_type = "conflict_error"


class TemporaryError(HsigError):
    """A dependency failed in a way that may pass (timeout, 5xx, 429): retry with backoff. HTTP 503."""

    status_code = 503
    error_type = "temporarily_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class Overloaded(TemporaryError):
    """Too much work queued; come back after ``retry_after`` seconds. HTTP 503 + Retry-After."""

    error_type = "overloaded_error"


class OperationalError(HsigError):
    """Something a person must fix (missing weights, no GPU for QLoRA, bad config). HTTP 500 / exit 1."""

    status_code = 500
    error_type = "operational_error"
