"""RSS parsing with feedparser on the saved CNBC snapshots and on broken payloads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.ingest.headlines import normalise_title, title_key
from services.ingest.rss import FeedError, parse_feed
from tests.ingest.conftest import snapshot

ITEM = "<item><title>{title}</title><pubDate>{date}</pubDate><guid>{guid}</guid></item>"


def _feed(*items: str) -> bytes:
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def test_snapshot_items_have_utc_times_and_clean_titles() -> None:
    parsed = parse_feed(snapshot(0), "rss:finance")
    assert len(parsed.records) == 30 and parsed.rejects.total() == 0
    first = parsed.records[0]
    # "Tue, 23 Jul 2019 21:39 GMT": no seconds in CNBC's pubDate.
    assert first.published_at == datetime(2019, 7, 23, 21, 39, tzinfo=UTC)
    assert first.guid == "guid_106035283"
    assert all("&#" not in record.title and "  " not in record.title for record in parsed.records)


def test_pubdate_with_and_without_seconds_and_offsets() -> None:
    parsed = parse_feed(
        _feed(
            ITEM.format(title="a", date="Tue, 23 Jul 2019 21:39 GMT", guid="1"),
            ITEM.format(title="b", date="Tue, 23 Jul 2019 21:39:45 GMT", guid="2"),
            ITEM.format(title="c", date="Tue, 23 Jul 2019 17:39:45 -0400", guid="3"),
        ),
        "s",
    )
    assert [record.published_at for record in parsed.records] == [
        datetime(2019, 7, 23, 21, 39, tzinfo=UTC),
        datetime(2019, 7, 23, 21, 39, 45, tzinfo=UTC),
        datetime(2019, 7, 23, 21, 39, 45, tzinfo=UTC),
    ]


def test_titles_are_unescaped_and_whitespace_normalised() -> None:
    assert normalise_title("  Shares of iRobot&#039;s   maker\n plunge &amp;amp; more ") == (
        "Shares of iRobot's maker plunge & more"
    )
    assert title_key("Stocks  making the BIGGEST moves!") == title_key("stocks making the biggest moves")


def test_missing_future_and_repeated_items_are_rejected_and_counted() -> None:
    now = datetime(2019, 7, 24, tzinfo=UTC)
    parsed = parse_feed(
        _feed(
            ITEM.format(title="kept", date="Tue, 23 Jul 2019 21:39 GMT", guid="1"),
            "<item><title>no date</title><guid>2</guid></item>",
            ITEM.format(title="from the future", date="Fri, 26 Jul 2019 10:00 GMT", guid="3"),
            ITEM.format(title="kept again", date="Tue, 23 Jul 2019 21:40 GMT", guid="1"),
            ITEM.format(title="", date="Tue, 23 Jul 2019 21:41 GMT", guid="4"),
        ),
        "s",
        now=now,
    )
    assert [record.title for record in parsed.records] == ["kept"]
    assert parsed.rejects.counts == {
        "missing_pubdate": 1,
        "future_pubdate": 1,
        "duplicate_in_feed": 1,
        "missing_title": 1,
    }


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (snapshot(0)[:5000], "malformed_xml"),
        (
            b"<!DOCTYPE html><html><head><title>502</title></head><body>Bad Gateway</body></html>",
            "not_a_feed",
        ),
        (
            _feed(ITEM.format(title="caf\xe9", date="Tue, 23 Jul 2019 21:39 GMT", guid="1")).replace(
                b"\xc3\xa9", b"\xe9"
            ),
            "invalid_encoding",
        ),
        (b"", "empty"),
        (b'{"not": "xml"}', "malformed_xml"),
    ],
)
def test_payloads_that_are_not_feeds_are_refused_whole(payload: bytes, reason: str) -> None:
    with pytest.raises(FeedError) as caught:
        parse_feed(payload, "s")
    assert caught.value.reason == reason
