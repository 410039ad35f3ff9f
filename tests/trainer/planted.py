"""Labelled rows with a planted rule the tiny model can learn, as files or database rows.

Headlines with "surge" or "beats" are labelled Increase, "plunge" or "misses" Decrease; the
rest of each headline and the market situation are noise drawn with a seeded generator.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.common.db import session_scope
from services.common.db.models import Headline, LabelledRow

UP_WORDS = ("surge", "beats")
DOWN_WORDS = ("plunge", "misses")
SUBJECTS = ("Apple", "Tesla", "Oil", "Stocks", "Gold", "Banks", "Netflix", "Bonds", "Retail", "Chip makers")
TAILS = (
    "after earnings",
    "as investors react",
    "in early trading",
    "on Fed news",
    "amid trade talks",
    "this week",
)
SITUATIONS = (
    "Sharp small increase after a sharp small decrease",
    "Small decrease after a small increase",
    "Flat",
)
START = datetime(2020, 1, 1, tzinfo=UTC)


def planted_rows(
    count: int = 400, seed: int = 0, start: datetime = START, step_minutes: int = 60
) -> list[dict]:
    """Rows in the LabelledRowOut shape, one headline every ``step_minutes``, 1 h horizon."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        up = rng.random() < 0.5
        word = rng.choice(UP_WORDS if up else DOWN_WORDS)
        when = start + timedelta(minutes=step_minutes * index)
        entry = when + timedelta(minutes=(60 - when.minute) % 60)
        entry_price = 7000 + rng.random() * 100
        exit_price = entry_price * (1.01 if up else 0.99)
        rows.append(
            {
                "id": index + 1,
                "headline_id": index + 1,
                "headline": f"{rng.choice(SUBJECTS)} {word} {rng.choice(TAILS)}",
                "headline_time": when.isoformat(),
                "exchange": "coinbase",
                "symbol": "BTC/USD",
                "timeframe": "1h",
                "horizon": "1h",
                "entry_time": entry.isoformat(),
                "exit_time": (entry + timedelta(hours=1)).isoformat(),
                "entry_price": entry_price,
                "exit_price": exit_price,
                "return": exit_price / entry_price - 1,
                "label": "Increase" if up else "Decrease",
                "market_situation": rng.choice(SITUATIONS),
                "situation_candles": [],
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def insert_rows(database_url: str, rows: list[dict]) -> None:
    """The same rows as the ingest service would store them: a headline and its labelled row."""
    with session_scope(database_url) as session:
        for row in rows:
            when = datetime.fromisoformat(row["headline_time"])
            headline = Headline(
                source="planted",
                guid=f"planted-{row['id']}",
                title=row["headline"],
                title_key=row["headline"].lower() + f"-{row['id']}",
                published_at=when,
                payload_sha256="0" * 64,
            )
            session.add(headline)
            session.flush()
            session.add(
                LabelledRow(
                    headline_id=headline.id,
                    exchange=row["exchange"],
                    symbol=row["symbol"],
                    timeframe=row["timeframe"],
                    horizon=row["horizon"],
                    headline_time=when,
                    entry_time=datetime.fromisoformat(row["entry_time"]),
                    exit_time=datetime.fromisoformat(row["exit_time"]),
                    entry_price=row["entry_price"],
                    exit_price=row["exit_price"],
                    return_=row["return"],
                    label=row["label"],
                    market_situation=row["market_situation"],
                    situation_candles=row["situation_candles"],
                )
            )
