"""A file's headlines as columns: ``HeadlineRecord.row()`` for every row at once.

A million-row import cannot afford a Python object and a JSON dump per row (about 40 us each,
25,000 rows/s). ``HeadlineRows`` holds the stored columns in one DataFrame, each value equal
to what ``HeadlineRecord.row()`` gives for that row: the text functions of ``headlines``
(normalise_title, title_key, payload_sha256) are computed with pyarrow kernels only for the
rows where they plainly do nothing more (printable ASCII, no ``&``, nothing JSON escapes), and
by those functions themselves for every other row. The records are still there, built on
demand (``rows[i]``), and tests/ingest/test_headline_import.py checks each one's ``row()``
against the frame.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from services.common.time_precision import Precision
from services.ingest.headlines import (
    TITLE_KEY_CHARS,
    HeadlineRecord,
    normalise_title,
    payload_sha256,
    title_key,
)

_NOT_PLAIN = r"[^\x20-\x7e]|&|  |^ | $"  # what normalise_title could change
_JSON_ESCAPED = r'["\\\x00-\x1f]'  # what json.dumps escapes with ensure_ascii=False
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _not_plain(array: pa.Array) -> np.ndarray:
    """Where ``_NOT_PLAIN`` matches, by literal kernels (a regex kernel per column cost about
    1 s a million rows; these a tenth of that). An empty string is plain: both functions give
    it back empty."""
    plain = pc.and_(
        pc.ascii_is_printable(array),
        pc.invert(pc.or_(pc.match_substring(array, "&"), pc.match_substring(array, "  "))),
    )
    plain = pc.and_(plain, pc.invert(pc.or_(pc.starts_with(array, " "), pc.ends_with(array, " "))))
    return ~np.asarray(pc.fill_null(plain, False), dtype=bool)


def normalise_titles(values: Sequence[str]) -> list[str]:
    """``normalise_title`` of each value."""
    array = pa.array(values, pa.string())
    odd = _not_plain(array)
    out = list(values)
    for index in np.flatnonzero(odd):
        out[index] = normalise_title(out[index])
    return out


def title_keys(titles: Sequence[str]) -> list[str]:
    """``title_key`` of each (already normalised) title."""
    array = pa.array(titles, pa.string())
    odd = _not_plain(array)  # the rest is printable ASCII: ascii_lower is utf8_lower there
    # One pass: a run of anything but [a-z0-9_] becomes one space, the same as replacing runs
    # of [^a-z0-9_ ] by a space and then collapsing spaces (two regex passes, 0.7 s more a million).
    key = pc.replace_substring_regex(pc.ascii_lower(array), r"[^a-z0-9_]+", " ")
    key = pc.utf8_slice_codeunits(pc.ascii_trim(key, " "), 0, TITLE_KEY_CHARS)
    out = key.to_pylist()
    for index in np.flatnonzero(odd):
        out[index] = title_key(titles[index])
    return out


def payload_hashes(names: Sequence[str], columns: Sequence[Sequence[str]]) -> list[str]:
    """``payload_sha256(dict(zip(names, row)))`` of each row, ``columns`` one list per name."""
    if not columns or not len(columns[0]):
        return []
    if len(set(names)) != len(names):  # a repeated name keeps its last value in the dict
        return [payload_sha256(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)]
    parts: list[pa.Array | pa.Scalar] = []
    for position, (name, values) in enumerate(
        sorted(zip(names, columns, strict=True), key=lambda pair: pair[0])
    ):
        parts.append(
            pa.scalar(("{" if position == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ")
        )
        parts.append(_json_strings(values))
    parts.append(pa.scalar("}"))
    texts = pc.binary_join_element_wise(*parts, "").cast(pa.large_binary()).to_pylist()  # UTF-8 bytes
    return [hashlib.sha256(text).hexdigest() for text in texts]


def _json_strings(values: Sequence[str]) -> pa.Array:
    array = pa.array(values, pa.string())
    quoted = pc.binary_join_element_wise(pa.scalar('"'), array, pa.scalar('"'), "")
    # What json.dumps escapes (``_JSON_ESCAPED``) lies among the rows with a quote, a backslash
    # or a character not printable; those (few) go through json.dumps itself.
    suspect = pc.or_(
        pc.or_(pc.match_substring(array, '"'), pc.match_substring(array, "\\")),
        pc.invert(pc.utf8_is_printable(array)),
    )
    escaped = np.flatnonzero(np.asarray(pc.fill_null(suspect, True), dtype=bool))
    if not len(escaped):
        return quoted
    out = quoted.to_pylist()
    for index in escaped:
        out[index] = json.dumps(values[index], ensure_ascii=False)
    return pa.array(out, pa.string())


class HeadlineRows(Sequence[HeadlineRecord]):
    """The accepted rows of one file: ``frame`` holds ``HeadlineRecord.row()``'s columns;
    ``rows[i]`` is the record (its ``raw`` the file's cells under the header's names)."""

    def __init__(self, frame: pd.DataFrame, header: list[str], cells: list[list[str]]) -> None:
        self.frame = frame
        self._header = header
        self._cells = cells

    def __len__(self) -> int:
        return len(self.frame)

    @overload
    def __getitem__(self, index: int) -> HeadlineRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[HeadlineRecord]: ...
    def __getitem__(self, index: int | slice) -> HeadlineRecord | list[HeadlineRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.frame.iloc[index]
        summary = row["summary"]
        return HeadlineRecord(
            row["source"],
            row["guid"],
            row["title"],
            _datetime(row["published_us"]),
            None,
            summary if isinstance(summary, str) else None,
            dict(zip(self._header, self._cells[index], strict=True)),
            Precision(row["time_precision"]),
            _datetime(row["known_us"]),
        )

    def __iter__(self) -> Iterator[HeadlineRecord]:
        return (self[index] for index in range(len(self)))

    def stored_frame(self) -> pd.DataFrame:
        """The columns as ``HeadlineRecord.row()`` names them, times as aware UTC."""
        frame = self.frame.drop(columns=["published_us", "known_us"])
        frame.insert(4, "published_at", pd.to_datetime(self.frame["published_us"], unit="us", utc=True))
        frame["known_at"] = pd.to_datetime(self.frame["known_us"], unit="us", utc=True)
        return frame


def _datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(micros))
