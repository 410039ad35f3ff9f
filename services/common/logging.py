"""Logging set-up shared by services and the CLI, plus ``log_once`` for noisy polls."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from services.common.redact import redact_text

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_seen: set[tuple[str, str]] = set()
_seen_lock = threading.Lock()


class RedactingFormatter(logging.Formatter):
    """Every line leaves with credentials masked in any URL it holds (ours or a library's:
    ccxt at DEBUG, httpx at INFO log full URLs), whatever the logger that wrote it."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at each record, not the stream of the moment it
    was made: a CLI run in-process after stderr was swapped (tests, notebooks) still logs."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_hsig", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(RedactingFormatter(_FORMAT))
        handler._hsig = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_once(logger: logging.Logger, level: int, key: str, message: str, *args: object) -> bool:
    """Log ``message`` the first time ``key`` is seen for this logger; later calls are silent.

    A source that fails every poll is logged when it starts failing, not every minute; call
    ``forget(key)`` when it recovers so the next failure is logged again.
    """
    marker = (logger.name, key)
    with _seen_lock:
        if marker in _seen:
            return False
        _seen.add(marker)
    logger.log(level, message, *args)
    return True


def forget(logger: logging.Logger, key: str) -> None:
    with _seen_lock:
        _seen.discard((logger.name, key))
