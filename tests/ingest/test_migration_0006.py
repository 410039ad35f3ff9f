"""Migration 0006 (time precision), on SQLite and PostgreSQL: headlines stored by 0005 get a
precision by the source rule and the end of that period as ``known_at``; of the rows the old
labeller derived, exactly those the new contract reads differently are deleted (the headline
at exactly a candle's open, labelled at that candle; the minute-precision one at :59, whose
situation now includes the candle closing at its minute's end), the rest keep their id and
values; the next label pass re-derives the deleted ones from known_at, and neither a second
pass, the data step run again, nor a downgrade and upgrade changes anything after that."""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest
from alembic import command
from sqlalchemy import column, select, table

from services.common.db import get_engine, session_scope
from services.common.db.migrate import MIGRATIONS_DIR, alembic_config, upgrade
from services.common.db.models import Candle, Headline, LabelledRow
from services.ingest.labeller import Market, label_new_rows
from tests.conftest import stored_at

T0 = datetime(2024, 1, 1, tzinfo=UTC)
H = 3600
MARKET = Market("coinbaseexchange", "BTC/USD", "1h")
NEW_HEADLINE_COLUMNS = {"time_precision", "known_at"}


def _migration() -> ModuleType:
    path = MIGRATIONS_DIR / "versions" / "0006_time_precision.py"
    spec = importlib.util.spec_from_file_location("migration_0006", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (source, guid, published seconds after T0, expected precision, expected known_at - published)
HEADLINES = [
    ("rss:feed", "on the hour", 2 * H, "second", 1),  # entered at the 2h open: re-derived
    ("rss:feed", "mid hour", 2 * H + 1815, "second", 1),
    ("csv:cnbc_headlines", "cnbc on the hour", 5 * H, "minute", 60),  # re-derived
    ("csv:cnbc_headlines", "cnbc mid hour", 5 * H + 1200, "minute", 60),
    ("csv:cnbc_headlines", "cnbc at 59", 6 * H + 3540, "minute", 60),  # situation: re-derived
    ("csv:dates.csv", "day one", 0, "day", 86_400),  # entered at the day's first open
    ("csv:dates.csv", "day two", 86_400, "day", 86_400),
    ("csv:times.csv", "seconds", 9 * H + 61, "second", 1),
    ("csv:times.csv", "seconds too", 10 * H, "second", 1),  # on the hour, in a second source
    ("csv:hours.csv", "hour a", 11 * H, "hour", H),  # entered at the 11h open: re-derived
    ("csv:hours.csv", "hour b", 14 * H, "hour", H),
    ("csv:hours.csv", "hour c", 20 * H, "hour", H),
]
REDERIVED = {"on the hour", "cnbc on the hour", "cnbc at 59", "day one", "day two", "seconds too"}
REDERIVED |= {"hour a", "hour b", "hour c"}


def _old_headline(source: str, guid: str, offset: int) -> dict[str, object]:
    return {
        "source": source,
        "guid": guid,
        "title": guid,
        "title_key": guid,
        "published_at": _at(offset),
        "payload_sha256": "0" * 64,
        "first_seen_at": T0,
    }


def _price(open_seconds: int) -> float:
    return 100.0 + (open_seconds // H) % 7


def _candle(hour: int) -> dict[str, object]:
    price = _price(hour * H)
    return {
        "exchange": MARKET.exchange, "symbol": MARKET.symbol, "timeframe": MARKET.timeframe,
        "open_time": _at(hour * H), "open": price, "high": price + 5, "low": price - 5,
        "close": price + 1, "volume": 1.0,
    }  # fmt: skip


def _old_row(headline_id: int, offset: int) -> dict[str, object]:
    """A row as the 0005 labeller derived it: entry at the first open at or after the
    published time, situation the two candles closed at or before it."""
    entry = -(-offset // H) * H
    newest = (offset // H) * H - H
    entry_price, exit_price = _price(entry), _price(entry) + 1
    return {
        "headline_id": headline_id, "exchange": MARKET.exchange, "symbol": MARKET.symbol,
        "timeframe": MARKET.timeframe, "horizon": "1h", "headline_time": _at(offset),
        "entry_time": _at(entry), "exit_time": _at(entry + H), "entry_price": entry_price,
        "exit_price": exit_price, "return": exit_price / entry_price - 1, "label": "Increase",
        "market_situation": "Steady small increase after a steady small increase",
        "situation_candles": [_at(newest).isoformat(), _at(newest - H).isoformat()],
        "labelled_at": T0,
    }  # fmt: skip


def _old_table(model: type, without: set[str]):  # type: ignore[no-untyped-def]
    return table(
        model.__tablename__,  # type: ignore[attr-defined]
        *(column(c.name, c.type) for c in model.__table__.columns if c.name not in without),  # type: ignore[attr-defined]
    )


def _snapshot(db_url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with session_scope(db_url) as session:
        heads = session.execute(
            select(Headline.guid, Headline.time_precision, Headline.known_at).order_by(Headline.guid)
        ).all()
        rows = session.execute(
            select(LabelledRow.id, LabelledRow.entry_time, LabelledRow.known_at, LabelledRow.market_situation)
            .order_by(LabelledRow.id)
        ).all()  # fmt: skip
    return [tuple(h) for h in heads], [tuple(r) for r in rows]


def test_stored_rows_get_precision_and_only_changed_labels_are_rederived(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    old_headlines = _old_table(Headline, NEW_HEADLINE_COLUMNS)
    old_rows = _old_table(LabelledRow, {"known_at"})
    with stored_at(db_url, "0005") as connection:
        connection.execute(old_headlines.insert(), [_old_headline(s, g, o) for s, g, o, _, _ in HEADLINES])
        connection.execute(Candle.__table__.insert(), [_candle(hour) for hour in range(72)])
        ids = dict(connection.execute(select(old_headlines.c.guid, old_headlines.c.id)).all())
        connection.execute(old_rows.insert(), [_old_row(ids[g], o) for _, g, o, _, _ in HEADLINES])
        before = dict(connection.execute(select(old_rows.c.headline_id, old_rows.c.id)).all())
        caplog.set_level(
            logging.INFO, logger="alembic.runtime.migration"
        )  # configure_logging quiets "alembic"
    assert f"{len(REDERIVED)} labelled rows to re-derive" in caplog.text

    with session_scope(db_url) as session:
        stored = {h.guid: h for h in session.scalars(select(Headline))}
        for _source, guid, offset, precision, shift in HEADLINES:
            assert (stored[guid].time_precision, stored[guid].known_at) == (precision, _at(offset + shift)), (
                guid
            )
        kept = {row.headline_id: row for row in session.scalars(select(LabelledRow))}
        guid_of = {h.id: h.guid for h in stored.values()}
        assert {guid_of[headline_id] for headline_id in kept} == {g for _, g, *_ in HEADLINES} - REDERIVED
        for headline_id, row in kept.items():  # same id, same values, the headline's known_at
            assert row.id == before[headline_id] and row.known_at == stored[guid_of[headline_id]].known_at
            assert row.entry_time >= row.known_at

        outcome = label_new_rows(session, MARKET, "1h", now=datetime(2100, 1, 1, tzinfo=UTC))
    assert outcome.labelled == len(REDERIVED)
    with session_scope(db_url) as session:
        rows = session.execute(select(LabelledRow, Headline).join(Headline)).all()
        assert len(rows) == len(HEADLINES)
        for row, headline in rows:
            assert row.known_at == headline.known_at and row.entry_time >= row.known_at, headline.guid
            assert all(
                datetime.fromisoformat(t) + timedelta(hours=1) <= row.known_at for t in row.situation_candles
            )
        entries = {headline.guid: row.entry_time for row, headline in rows}
    assert entries["on the hour"] == _at(3 * H) and entries["cnbc on the hour"] == _at(6 * H)
    assert entries["day one"] == _at(24 * H) and entries["day two"] == _at(48 * H)
    assert entries["cnbc at 59"] == _at(7 * H)  # as before; its situation now ends at 7h

    settled = _snapshot(db_url)
    with session_scope(db_url) as session:
        assert label_new_rows(session, MARKET, "1h", now=datetime(2100, 1, 1, tzinfo=UTC)).labelled == 0
    with get_engine(db_url).begin() as connection:
        assert _migration().backfill(connection) == (0, 0)
    command.downgrade(alembic_config(db_url), "0005")
    upgrade(db_url)
    assert _snapshot(db_url) == settled


@pytest.mark.parametrize(
    ("source", "times", "precision", "shifts"),
    [
        ("rss:x", ["2024-01-01T10:00:00"], "second", [1]),
        ("csv:cnbc_headlines", ["2024-01-01T10:00:00"], "minute", [60]),
        ("csv:a", ["2024-01-01T10:00:07", "2024-01-01T11:00:00"], "second", [1, 1]),
        ("csv:a", ["2024-01-01T10:07:00", "2024-01-01T11:00:00"], "minute", [60, 60]),
        ("csv:a", ["2024-01-01T10:30:00", "2024-01-02T13:30:00", "2024-01-03T02:30:00"], "hour", [H] * 3),
        ("csv:a", ["2024-01-01T18:30:00", "2024-01-05T18:30:00"], "day", [86_400] * 2),  # Kolkata
        # New York days: 05:00 UTC in winter, 04:00 in summer (the fall-back day may be 25 h).
        ("csv:a", ["2024-01-01T05:00:00", "2024-07-01T04:00:00"], "day", [86_400, 90_000]),
        # London days across UTC midnight: 00:00 in winter, 23:00 the day before in summer.
        ("csv:a", ["2024-01-01T00:00:00", "2024-06-30T23:00:00"], "day", [86_400, 90_000]),
        ("csv:a", ["2024-01-01T00:00:00", "2024-06-30T21:00:00"], "hour", [H, H]),
    ],
)
def test_the_backfill_rule(source: str, times: list[str], precision: str, shifts: list[int]) -> None:
    migration = _migration()
    moments = [datetime.fromisoformat(text).replace(tzinfo=UTC) for text in times]
    assert migration.source_precision(source, moments) == precision
    ends = migration.known_ats(moments, precision)
    assert [(end - moment).total_seconds() for moment, end in zip(moments, ends, strict=True)] == shifts
