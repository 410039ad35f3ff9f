"""What a headline is before it is stored: normalised text, UTC time, identity and payload hash."""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    """One headline ready to store: ``published_at`` is aware UTC."""

    source: str
    guid: str
    title: str
    published_at: datetime
    link: str | None = None
    summary: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def title_key(self) -> str:
        return title_key(self.title)

    def row(self) -> dict[str, Any]:
        return {
            "source": self.source[:128],
            "guid": self.guid[:512],
            "title": self.title,
            "title_key": self.title_key,
            "published_at": self.published_at,
            "link": self.link,
            "summary": self.summary,
            "payload_sha256": payload_sha256(self.raw or {"title": self.title, "guid": self.guid}),
        }


@dataclass
class Rejects:
    """Items refused while parsing, counted by reason (each reason logged once per source)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, example: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, example[:200])

    def total(self) -> int:
        return sum(self.counts.values())
