"""Waiting for something another thread or process does, with one failure message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], seconds: float = 60.0, what: str = "the condition", interval: float = 0.1
) -> T:
    """Poll ``condition`` until it returns something truthy and return that; after ``seconds``
    fail the test naming ``what`` (and the last value seen)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what} (last: {value!r:.200})")
        time.sleep(interval)
