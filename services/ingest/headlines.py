"""What a headline is before it is stored: normalised text, UTC time, identity and payload hash."""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.time_precision import Precision
from services.common.time_precision import known_at as period_end

_SPACES = re.compile(r"\s+")
_KEY_DROP = re.compile(r"[^\w ]+")
TITLE_KEY_CHARS = 512


def normalise_title(raw: str) -> str:
    """HTML entities unescaped (twice: feeds double-escape '&amp;#039;'), whitespace collapsed."""
    text = html.unescape(html.unescape(raw or ""))
    text = unicodedata.normalize("NFKC", text)
    return _SPACES.sub(" ", text).strip()


def title_key(title: str) -> str:
    """The cross-source identity of a title: case, punctuation and spacing do not matter."""
    key = _KEY_DROP.sub(" ", normalise_title(title).casefold())
    return _SPACES.sub(" ", key).strip()[:TITLE_KEY_CHARS]


def payload_sha256(payload: dict[str, Any]) -> str:
    """Hash of the raw item as received (sorted keys), kept to audit what a row came from."""
    blob = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class HeadlineRecord:
    """One headline ready to store: ``published_at`` is aware UTC, the start of its
    ``precision`` period; ``known_at`` the period's end in the source's zone
    (``time_precision.known_at``), or None for a time known to the second or the minute (whose
    period ends at the same instant in every zone). ``row()`` stores both."""

    source: str
    guid: str
    title: str
    published_at: datetime
    link: str | None = None
    summary: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    precision: Precision = Precision.second
    known_at: datetime | None = None

    @property
    def title_key(self) -> str:
        return title_key(self.title)

    def stored_known_at(self) -> datetime:
        """The end of the precision period: ``known_at`` when given, else derived for a second
        or a minute; an hour or a day without its ``known_at`` is refused (its end depends on the
        source's zone, which only the importer knows)."""
        if self.known_at is not None:
            return self.known_at
        if self.published_at.tzinfo is None or self.published_at.utcoffset() is None:
            raise ValueError(f"naive datetime {self.published_at!r}: every stored time must be aware UTC")
        if self.precision in (Precision.second, Precision.minute):
            return period_end(self.published_at, self.precision)
        raise ValueError(f"{self.precision.value}-precision headline {self.guid!r} has no known_at")

    def row(self) -> dict[str, Any]:
        return {
            "source": self.source[:128],
            "guid": self.guid,  # over 512 characters is rejected before (field_fault)
            "title": self.title,
            "title_key": self.title_key,
            "published_at": self.published_at,
            "link": self.link,
            "summary": self.summary,
            "payload_sha256": payload_sha256(self.raw or {"title": self.title, "guid": self.guid}),
            "time_precision": Precision(self.precision).value,
            "known_at": self.stored_known_at(),
        }


EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ItemLimits:
    """What a stored headline may be (``HSIG_MAX_*_CHARS``, ``HSIG_EARLIEST_TIME``,
    ``HSIG_FUTURE_SKEW_SECONDS``). An item over a field cap is rejected, never truncated: a cut
    title is a headline nobody wrote, and one over 1,000 characters is refused by inference."""

    max_title_chars: int = 1000
    max_summary_chars: int = 10_000
    max_link_chars: int = 2048
    max_guid_chars: int = 512
    earliest: datetime = EARLIEST_TIME
    future_skew: timedelta = timedelta(minutes=5)

    @classmethod
    def from_settings(cls, settings: Any) -> ItemLimits:
        return cls(
            settings.max_title_chars,
            settings.max_summary_chars,
            settings.max_link_chars,
            settings.max_guid_chars,
            settings.earliest_time,
            timedelta(seconds=settings.future_skew_seconds),
        )


DEFAULT_LIMITS = ItemLimits()


def time_fault(moment: datetime, now: datetime, limits: ItemLimits = DEFAULT_LIMITS) -> str | None:
    """Why a headline time is not plausible, or None: no timezone, before ``limits.earliest``
    (year 0001, 1900, 1969...) or more than ``limits.future_skew`` after ``now``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return "naive_pubdate"
    if moment < limits.earliest:
        return "early_pubdate"
    if moment > now + limits.future_skew:
        return "future_pubdate"
    return None


def field_fault(record: HeadlineRecord, limits: ItemLimits = DEFAULT_LIMITS) -> str | None:
    """The first stored field over its cap (``title_too_long``...), or None."""
    for name, cap in (
        ("title", limits.max_title_chars),
        ("guid", limits.max_guid_chars),
        ("link", limits.max_link_chars),
        ("summary", limits.max_summary_chars),
    ):
        value = getattr(record, name)
        if value is not None and len(value) > cap:
            return f"{name}_too_long"
    return None


@dataclass
class Rejects:
    """Items refused while parsing, counted by reason (each reason logged once per source)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, example: str = "", count: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.examples.setdefault(reason, example[:200])

    def total(self) -> int:
        return sum(self.counts.values())
