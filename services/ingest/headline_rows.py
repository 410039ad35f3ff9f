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
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import BinaryIO, overload

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
PARALLEL_HASH_ROWS = 100_000  # from this many rows a file's payload hashes are made in a second process


def not_plain(array: pa.Array) -> np.ndarray:
    """Where ``_NOT_PLAIN`` matches, by literal kernels (a regex kernel per column cost about
    1 s a million rows; these a tenth of that). An empty string is plain: both functions give
    it back empty."""
    if not array.null_count and len(array):
        found = _not_plain_at_ends(array)
        if found is not None:
            return found
    plain = pc.and_(
        pc.ascii_is_printable(array),
        pc.invert(pc.or_(pc.match_substring(array, "&"), pc.match_substring(array, "  "))),
    )
    plain = pc.and_(plain, pc.invert(pc.or_(pc.starts_with(array, " "), pc.ends_with(array, " "))))
    return ~np.asarray(pc.fill_null(plain, False), dtype=bool)


def _not_plain_at_ends(array: pa.Array) -> np.ndarray | None:
    """``not_plain`` of a column whose bytes are all printable ASCII and hold no ``&`` and no
    two spaces running (looked for in the column's bytes at once: a pair across two values
    only sends the column to the kernels): then only a space at a value's start or end can
    make it not plain, found from the offsets. None for any other column."""
    data, offsets = _utf8_bytes(array)
    if not len(data):
        return np.zeros(len(array), dtype=bool)
    raw = data.tobytes()
    if int(data.min()) < 0x20 or int(data.max()) > 0x7E or b"&" in raw or b"  " in raw:
        return None
    starts, ends = offsets[:-1] - offsets[0], offsets[1:] - offsets[0]
    filled = ends > starts
    first = data[np.minimum(starts, len(data) - 1)]  # (an empty value reads a neighbour: masked)
    last = data[np.maximum(ends - 1, 0)]
    return filled & ((first == 0x20) | (last == 0x20))


def _fixed(array: pa.Array, odd: np.ndarray, function: Callable[[str], str]) -> pa.Array:
    """``array`` with ``function`` applied in Python to the values where ``odd``."""
    where = np.flatnonzero(odd)
    if not len(where):
        return array
    fixed = [function(text) for text in array.take(pa.array(where)).to_pylist()]
    return pc.replace_with_mask(array, pa.array(odd), pa.array(fixed, array.type))


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
    where = np.flatnonzero(odd)
    key = _ascii_keys(pc.if_else(pa.array(odd), "", titles) if len(where) else titles)
    if len(key) and int(pc.max(pc.binary_length(key)).as_py()) > TITLE_KEY_CHARS:  # ASCII: a byte a char
        key = pc.utf8_slice_codeunits(key, 0, TITLE_KEY_CHARS)
    if not len(where):
        return key
    fixed = [title_key(text) for text in titles.take(pa.array(where)).to_pylist()]
    return pc.replace_with_mask(key, pa.array(odd), pa.array(fixed, key.type))


# A byte of a printable ASCII title in its key: [a-z0-9_] itself (upper case lowered), any
# other a space.
_KEY_BYTES = bytearray(b" " * 256)
for _char in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _KEY_BYTES[_char] = _KEY_BYTES[ord(chr(_char).upper())] = _char


def _ascii_keys(titles: pa.Array) -> pa.Array:
    """Each printable ASCII title lowered, every run of characters not in [a-z0-9_] one
    space, trimmed. The titles' bytes are mapped all at once through ``_KEY_BYTES`` (a byte's
    key byte does not depend on its title: the offsets stay), then Arrow's literal kernels
    halve runs of spaces until none is left and trim each value (the regex kernel doing it
    cost 1.4 s a million rows; joining the titles and replacing in one bytes object, 1.1 s;
    these, 0.3 s)."""
    if not len(titles):
        return titles
    titles = pc.fill_null(titles, "") if titles.null_count else titles
    _, offsets, data = titles.buffers()
    if data is None:  # every title empty
        return titles
    mapped = pa.py_buffer(data.to_pybytes().translate(_KEY_BYTES))
    keys = pa.Array.from_buffers(titles.type, len(titles), [None, offsets, mapped], offset=titles.offset)
    while True:  # a run of n spaces is one after log2(n) passes; a pass that shortens nothing ends it
        shorter = pc.replace_substring(keys, "  ", " ")
        if _byte_count(shorter) == _byte_count(keys):
            break
        keys = shorter
    return pc.ascii_trim(keys, " ")


def _byte_count(array: pa.Array) -> int:
    """The bytes of all the values of a string array (from its offsets)."""
    _, offsets = _utf8_bytes(array)
    return int(offsets[-1] - offsets[0])


def payload_hashes(names: Sequence[str], columns: Sequence[pa.Array]) -> list[str]:
    """``payload_sha256(dict(zip(names, row)))`` of each row, ``columns`` one string array
    per name."""
    return payload_hash_array(names, columns).to_pylist()


def payload_hash_array(names: Sequence[str], columns: Sequence[pa.Array]) -> pa.Array:
    """``payload_hashes`` as one string array (hex digests), made in this process."""
    texts = payload_texts(names, columns)
    if isinstance(texts, list):
        return pa.array(texts, pa.string())
    sha256 = hashlib.sha256
    return _hex(b"".join([sha256(text).digest() for text in texts.to_pylist()]), len(texts))


def payload_texts(names: Sequence[str], columns: Sequence[pa.Array]) -> pa.Array | list[str]:
    """What ``payload_sha256`` hashes for each row: its JSON (sorted keys) as UTF-8, one
    binary value a row, built by one join. With a name repeated (the dict keeps its last
    value), the hashes themselves, row by row."""
    if not columns or not len(columns[0]):
        return pa.array([], pa.large_binary())
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
    return pc.binary_join_element_wise(*parts, "").cast(pa.large_binary())


# Each byte's two hex digits as one 2-byte item (one lookup a byte, not two and an interleave).
_HEX_PAIRS = np.frombuffer(b"".join(f"{byte:02x}".encode() for byte in range(256)), dtype="S2")


def _hex(digests: bytes, rows: int) -> pa.Array:
    """32-byte digests, one after the other, as hex strings (what ``hexdigest`` gives)."""
    text = _HEX_PAIRS[np.frombuffer(digests, dtype=np.uint8)]
    offsets = np.arange(0, 64 * (rows + 1), 64, dtype=np.int32)
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(text))


# The second process's program: the texts' ends (int64, native order) then their bytes from
# the file it is given, the 32-byte digests to stdout. Only the standard library (-I -S: no
# site, nothing from the environment).
_HASHER = """
import hashlib, mmap, sys
rows = int(sys.argv[2])
with open(int(sys.argv[1]), "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as whole:
    view = memoryview(whole)
    ends, data = view[: 8 * rows].cast("q"), view[8 * rows :]
    sha256, start, digests = hashlib.sha256, 0, []
    for end in ends:
        digests.append(sha256(data[start:end]).digest())
        start = end
    del ends, data, view
sys.stdout.buffer.write(b"".join(digests))
"""


class PayloadHashes:
    """``payload_hash_array`` of a file's rows, made by a second Python process while this
    one goes on parsing (the SHA-256 per row is a Python loop that holds the GIL, a second
    a million rows; on another core it costs the parse only the texts' join and the files'
    copy). Under PARALLEL_HASH_ROWS rows, or if the process cannot be started or fails,
    made here: the same digests either way. ``result()`` waits for them; ``close()`` ends
    the process if they are not wanted after all."""

    def __init__(self, names: Sequence[str], columns: Sequence[pa.Array]) -> None:
        self._names, self._columns = names, columns
        self._process: subprocess.Popen[bytes] | None = None
        rows = len(columns[0]) if columns else 0
        if rows >= PARALLEL_HASH_ROWS:
            texts = payload_texts(names, columns)
            if not isinstance(texts, list):
                self._process = _start_hasher(texts)
        self._rows = rows

    def result(self) -> pa.Array:
        if self._process is not None:
            digests, _ = self._process.communicate()
            failed = self._process.returncode != 0 or len(digests) != 32 * self._rows
            self._process = None
            if not failed:
                return _hex(digests, self._rows)
        return payload_hash_array(self._names, self._columns)

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.communicate()
            self._process = None


def _start_hasher(texts: pa.Array) -> subprocess.Popen[bytes] | None:
    """The second process, reading the texts from an unnamed file in memory (one write here;
    a pipe's 64 KB at a time waits on the GIL between writes; 110 MB took 0.05 s into a memfd
    each time, into a temporary file on disk 0.3 s the first time in a process, 0.025 s
    later), or None if it cannot start."""
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = texts.buffers()[2]
    try:
        with _scratch_file() as file:
            file.write((offsets[1:] - offsets[0]).astype(np.int64).tobytes())
            if data is not None:
                file.write(memoryview(data)[offsets[0] : offsets[-1]])
            file.flush()
            return subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HASHER, str(file.fileno()), str(len(texts))],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                pass_fds=(file.fileno(),),
            )
    except OSError:
        return None


def _json_inner(array: pa.Array) -> pa.Array:
    """Each value as ``json.dumps`` writes it, less its two quotes (one join for the whole
    row, the quotes in the literal parts)."""
    if not _may_escape(array):  # the usual column: nothing in it that JSON escapes
        return array
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


def _may_escape(array: pa.Array) -> bool:
    """Whether any value holds what ``json.dumps`` escapes: ``"``, ``\\`` or a character
    below U+0020 (with ensure_ascii=False nothing else). Looked for in the column's UTF-8
    bytes all at once (memchr and one minimum, a few milliseconds a million rows; three
    kernels per value took 0.2 s), where no other character's bytes can be one of them. A
    null (no bytes) is looked at row by row by the caller."""
    if array.null_count or not len(array):
        return bool(array.null_count)
    data, _ = _utf8_bytes(array)
    if not len(data):
        return False
    raw = data.tobytes()
    return int(data.min()) < 0x20 or b'"' in raw or b"\\" in raw


def _utf8_bytes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's values' bytes, one after the other (its data buffer, no copy), and
    its offsets (into the buffer: the first value starts at ``offsets[0]``)."""
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=width)[array.offset : array.offset + len(array) + 1]
    if data_buffer is None or offsets[-1] == offsets[0]:
        return np.zeros(0, dtype=np.uint8), offsets
    return np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]], offsets


def _scratch_file() -> BinaryIO:
    """An unnamed read-write file: in memory (Linux memfd) where there is one, else on disk."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("headline-payloads"), "w+b")  # (closed by the caller)
    return tempfile.TemporaryFile()


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
