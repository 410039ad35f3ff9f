"""How precisely a headline's time is known, and when it counts as known.

A source gives a time to some precision: an RSS pubDate to the second, the Kaggle CNBC file
to the minute, many CSVs to the day ("18-Jul-20"). A headline known only to the day may
have been published at 23:59 in its zone, so for labelling, splitting and scoring it is taken
as known at the *end* of its precision period in that zone (``known_at``), never at the
start: prices from before its publication must not decide its label.

``published_at`` stays what the source said (the period's start, in UTC); ``known_at`` is
derived from it, the precision and the zone, and is what every no-look-ahead rule reads.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class Precision(StrEnum):
    """Finest unit the source gave. Ordered coarse-to-fine comparisons use ``seconds``."""

    second = "second"
    minute = "minute"
    hour = "hour"
    day = "day"

    @property
    def seconds(self) -> int:
        return _FIXED[self] if self is not Precision.day else 86_400


_FIXED = {Precision.second: 1, Precision.minute: 60, Precision.hour: 3600}


def period_start(moment: datetime, precision: Precision, zone: ZoneInfo | None = None) -> datetime:
    """The start of the precision period holding ``moment`` (aware), in UTC.

    Hours and finer are truncated on the zone's clock at the offset in force at ``moment``
    (minutes agree in every zone, all being offset by whole minutes; hours differ in the
    half-hour zones). Keeping that one offset, rather than reading the truncated wall time back
    through the zone, keeps ``moment`` inside its period when the hour is repeated or skipped
    (01:30 in the second, standard-time pass of a fall-back night starts at 01:00 standard
    time, not at the first 01:00). Across Lord Howe's 30-minute change the second pass of
    01:00-02:00 is read from 01:00 at the new offset, overlapping the first; its end is still
    right. Days are the zone's calendar day, from its first midnight.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("moment must be timezone-aware")
    local = moment.astimezone(zone or UTC)
    if precision is Precision.day:
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return _wall_to_utc(start, zone or UTC)
    if precision is Precision.hour:
        start = local.replace(minute=0, second=0, microsecond=0)
    elif precision is Precision.minute:
        start = local.replace(second=0, microsecond=0)
    else:
        start = local.replace(microsecond=0)
    offset = local.utcoffset() or timedelta(0)
    return (start.replace(tzinfo=None) - offset).replace(tzinfo=UTC)


def known_at(moment: datetime, precision: Precision, zone: ZoneInfo | None = None) -> datetime:
    """The end of the precision period holding ``moment``, in UTC: when the headline is
    certainly known. A day ends at the zone's next midnight (23 or 25 hours on DST days)."""
    start = period_start(moment, precision, zone)
    if precision is not Precision.day:
        return start + timedelta(seconds=precision.seconds)
    zone = zone or UTC
    local_start = start.astimezone(zone)
    next_day = (local_start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
    return _wall_to_utc(next_day, zone)


def _wall_to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in ``zone`` to UTC, taking the earlier reading of a repeated hour
    (fold=0): the period starts at the first time the clock shows it."""
    naive = local.replace(tzinfo=None)
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def precision_of_shift(seconds: float) -> Precision:
    """The precision whose period is ``seconds`` long (known_at - period start): a labelled row
    stores its known_at and its headline's time, so its precision is read back from the shift
    (1 s, 60 s, 1 h, or a day of 23 to 25 hours)."""
    for precision in (Precision.second, Precision.minute, Precision.hour):
        if seconds <= precision.seconds:
            return precision
    return Precision.day
