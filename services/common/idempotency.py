"""``Idempotency-Key`` on the POSTs that start work: a training job, a backtest run.

A client that retries such a POST (it timed out, but the server had queued the work) must not
start the work twice. With a key, the first request creates the row and stores the key with
it (a unique column); a repeat with the same key and the same body gets that row back, with
``Idempotent-Replayed: true``, and starts nothing; the same key with another body is a 409.
Two requests racing with one key create one row: the loser's insert fails on the constraint
and it answers with the winner's row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Header
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.common.db import session_scope
from services.common.errors import Conflict, InvalidInput

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_LENGTH = 128
_VALID = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")  # visible ASCII, no spaces

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description=f"Repeat a request without repeating its work (1 to {MAX_LENGTH} visible ASCII characters).",
    ),
]

Row = TypeVar("Row")


def checked(key: str | None) -> str | None:
    if key is not None and not _VALID.fullmatch(key):
        raise InvalidInput(
            f"{HEADER} must be 1 to {MAX_LENGTH} visible ASCII characters without spaces", param=HEADER
        )
    return key


def replay(database_url: str, model: type[Row], key: str, body: dict[str, Any]) -> Row | None:
    """The row an earlier request with this key created (checked to be the same request), or
    None: lets a service answer a repeat before re-running its costly checks."""
    with session_scope(database_url) as session:
        existing = session.scalars(select(model).where(model.idempotency_key == key)).one_or_none()  # type: ignore[attr-defined]
    return None if existing is None else _same_request(existing, key, body)


def create_once(
    database_url: str, model: type[Row], key: str | None, body: dict[str, Any], make: Callable[[], Row]
) -> tuple[Row, bool]:
    """(the row, whether it already existed). ``make`` builds the new row; ``body`` is what the
    row stores as its ``config``, compared with a replay's. The insert comes first: the unique
    key decides, and only a repeat pays for reading the row it collided with."""
    try:
        with session_scope(database_url) as session:
            row = make()
            row.idempotency_key = key  # type: ignore[attr-defined]
            session.add(row)
            session.flush()
            return row, False
    except IntegrityError:
        existing = replay(database_url, model, key, body) if key is not None else None
        if existing is None:
            raise
        return existing, True


def _same_request(row: Row, key: str, body: dict[str, Any]) -> Row:
    if row.config != body:  # type: ignore[attr-defined]
        raise Conflict(
            f"{HEADER} {key!r} was used for a different request ({type(row).__name__} "
            f"{row.id}): send a new key for new work",  # type: ignore[attr-defined]
            param=HEADER,
        )
    return row
