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
from collections.abc import Callable, Iterator, Sequence
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


def not_plain(array: pa.Array) -> np.ndarray:
    """Where ``_NOT_PLAIN`` matches, by literal kernels (a regex kernel per column cost about
    1 s a million rows; these a tenth of that). An empty string is plain: both functions give
    it back empty."""
    plain = pc.and_(
        pc.ascii_is_printable(array),
        pc.invert(pc.or_(pc.match_substring(array, "&"), pc.match_substring(array, "  "))),
    )
    plain = pc.and_(plain, pc.invert(pc.or_(pc.starts_with(array, " "), pc.ends_with(array, " "))))
    return ~np.asarray(pc.fill_null(plain, False), dtype=bool)


def _fixed(array: pa.Array, odd: np.ndarray, function: Callable[[str], str]) -> pa.Array:
    """``array`` with ``function`` applied in Python to the values where ``odd``."""
    where = np.flatnonzero(odd)
    if not len(where):
        return array
    fixed = [function(text) for text in array.take(pa.array(where)).to_pylist()]
    return pc.replace_with_mask(array, pa.array(odd), pa.array(fixed, pa.string()))


def normalise_titles(values: pa.Array, odd: np.ndarray | None = None) -> pa.Array:
    """``normalise_title`` of each value (a string array); ``odd``: ``not_plain(values)``
    when the caller has it."""
    return _fixed(values, not_plain(values) if odd is None else odd, normalise_title)


def title_keys(titles: pa.Array, maybe_odd: np.ndarray | None = None) -> pa.Array:
    """``title_key`` of each (already normalised) title. ``maybe_odd``: where the titles
    may not be plain (``not_plain`` of them before normalising: a plain title was left as
    it was), so that only those are looked at again."""
    if maybe_odd is None:
        odd = not_plain(titles)  # the rest is printable ASCII: ascii_lower is utf8_lower there
    else:
        odd = np.zeros(len(titles), dtype=bool)
        again = np.flatnonzero(maybe_odd)
        if len(again):
            odd[again] = not_plain(titles.take(pa.array(again)))
    key = pc.utf8_slice_codeunits(_ascii_keys(pc.if_else(pa.array(odd), "", titles)), 0, TITLE_KEY_CHARS)
    where = np.flatnonzero(odd)
    if not len(where):
        return key
    fixed = [title_key(text) for text in titles.take(pa.array(where)).to_pylist()]
    return pc.replace_with_mask(key, pa.array(odd), pa.array(fixed, pa.string()))


# A byte of a printable ASCII title in its key: [a-z0-9_] itself (upper case lowered), any
# other a space; "\n" (no such title holds one) the end of a title.
_KEY_BYTES = bytearray(b" " * 256)
for _char in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _KEY_BYTES[_char] = _KEY_BYTES[ord(chr(_char).upper())] = _char
_KEY_BYTES[ord("\n")] = ord("\n")


def _ascii_keys(titles: pa.Array) -> pa.Array:
    """Each printable ASCII title lowered, every run of characters not in [a-z0-9_] one
    space, trimmed: on the titles' bytes all at once (the regex kernel doing it cost 1.4 s a
    million rows, these byte passes a third of that). The titles are joined, each followed
    by "\n", mapped a byte at a time through ``_KEY_BYTES``, runs of spaces halved until
    single, the spaces beside a title's end or start dropped, then cut at the ends."""
    if not len(titles):
        return titles
    joined = pc.binary_join_element_wise(titles, pa.scalar(""), "\n")  # "title\n" each
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[
        joined.offset : joined.offset + len(joined) + 1
    ]
    data = joined.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]].translate(_KEY_BYTES)
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    data = data.replace(b" \n", b"\n").replace(b"\n ", b"\n").removeprefix(b" ")
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    lengths = np.zeros(len(ends) + 1, dtype=np.int32)
    lengths[1:] = ends - np.arange(len(ends))  # characters before each end, the ends not counted
    return pa.StringArray.from_buffers(
        len(ends), pa.py_buffer(lengths), pa.py_buffer(data.replace(b"\n", b""))
    )


def payload_hashes(names: Sequence[str], columns: Sequence[pa.Array]) -> list[str]:
    """``payload_sha256(dict(zip(names, row)))`` of each row, ``columns`` one string array
    per name."""
    if not columns or not len(columns[0]):
        return []
    if len(set(names)) != len(names):  # a repeated name keeps its last value in the dict
        rows = zip(*(values.to_pylist() for values in columns), strict=True)
        return [payload_sha256(dict(zip(names, row, strict=True))) for row in rows]
    parts: list[pa.Array | pa.Scalar] = []
    for position, (name, values) in enumerate(
        sorted(zip(names, columns, strict=True), key=lambda pair: pair[0])
    ):
        opening = ("{" if position == 0 else '", ') + json.dumps(name, ensure_ascii=False) + ': "'
        parts += [pa.scalar(opening), _json_inner(values)]
    parts.append(pa.scalar('"}'))
    texts = pc.binary_join_element_wise(*parts, "").cast(pa.large_binary()).to_pylist()  # UTF-8 bytes
    return [hashlib.sha256(text).hexdigest() for text in texts]


def _json_inner(array: pa.Array) -> pa.Array:
    """Each value as ``json.dumps`` writes it, less its two quotes (one join for the whole
    row, the quotes in the literal parts)."""
    # What json.dumps escapes (``_JSON_ESCAPED``) lies among the rows with a quote, a backslash
    # or a character not printable; those (few) go through json.dumps itself.
    suspect = pc.or_(
        pc.or_(pc.match_substring(array, '"'), pc.match_substring(array, "\\")),
        pc.invert(pc.utf8_is_printable(array)),
    )
    escaped = np.asarray(pc.fill_null(suspect, True), dtype=bool)
    if not escaped.any():
        return array
    dumped = [
        json.dumps(text, ensure_ascii=False)[1:-1] for text in array.filter(pa.array(escaped)).to_pylist()
    ]
    return pc.replace_with_mask(array, pa.array(escaped), pa.array(dumped, pa.string()))


class ColumnCells(Sequence[list[str]]):
    """A file's rows of cells held as one string array per column; ``cells[i]`` is row i
    as a list (built on demand: a record's ``raw``)."""

    def __init__(self, columns: Sequence[pa.Array]) -> None:
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    @overload
    def __getitem__(self, index: int) -> list[str]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[str]]: ...
    def __getitem__(self, index: int | slice) -> list[str] | list[list[str]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = _position(index, len(self))
        return [values[index].as_py() for values in self.columns]


def _position(index: int, length: int) -> int:
    """A sequence index (negative counts from the end); IndexError outside the sequence."""
    position = index + length if index < 0 else index
    if not 0 <= position < length:
        raise IndexError(index)
    return position


class HeadlineRows(Sequence[HeadlineRecord]):
    """The accepted rows of one file: ``frame`` holds ``HeadlineRecord.row()``'s columns;
    ``rows[i]`` is the record (its ``raw`` the file's cells under the header's names)."""

    def __init__(self, frame: pd.DataFrame, header: list[str], cells: Sequence[Sequence[str]]) -> None:
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
        index = _position(index, len(self))
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
