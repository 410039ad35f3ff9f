"""The headline parse without a Python object per row (issue 11's bench goal): the Arrow
readers of headline_import (``_csv_rows_clean``, ``_csv_rows_fast``) give the table the csv
module gives (``_csv_rows_slow``: same header, cells, line numbers and rejects) on every
fixture and on files made to be awkward, and an import through them stores and rejects
exactly what an import through the csv module alone does. The column kernels of
headline_rows equal the per-row reference functions of headlines."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from services.common.errors import InvalidInput
from services.ingest import headline_import, headline_rows
from services.ingest.headline_import import (
    ReadOptions,
    blank,
    decode,
    import_headlines,
    sniff_delimiter,
    strip,
)
from services.ingest.headline_rows import normalise_titles, not_plain, payload_hashes, title_keys
from services.ingest.headlines import normalise_title, payload_sha256, title_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "headlines"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _random_mix(seed: int, newline: str) -> str:
    """Quoted and unquoted cells, doubled quotes, delimiters in quotes, blank and ragged
    lines, bad and partial times, empty titles and ids, non-ASCII and control characters."""
    rnd = random.Random(seed)
    lines = ["guid,published_at,title,summary"]
    for i in range(1500):
        cells = [
            rnd.choice(["", f"g{i}", f"g{i % 40}", " g "]),
            rnd.choice(["2021-03-04 05:06:07", "2021-03-04", "Apr-18", "", "garbage", "2021-02-30 01:00:00"]),
            rnd.choice(
                ["Bitcoin up", "Ether, down", 'Say "hi"', " lead", "tail ", "a  b", "café", "", "x&amp;y"]
            ),
            rnd.choice(["", "sum", "s,u", 'q"q', "\u2028sep", "back\\slash", "\x01ctl"]),
        ]
        quote = lambda cell: '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"') else cell  # noqa: E731
        lines.append(",".join(quote(cell) for cell in cells))
        if rnd.random() < 0.01:
            lines.append(rnd.choice(["", ",,,", "a,b", " "]))
    return newline.join(lines) + newline


# name -> (text, encoding); each made to take a given path of the reader (PATHS).
FILES: dict[str, tuple[str, str]] = {
    "clean.csv": ("id,time,title\nh1,2020-01-02 10:00:00,Bitcoin rally #1\nh2,Apr-18,Ether falls #2\n", "utf-8"),
    "clean_empty_rows.csv": ("time,title\n2020-01-02,A\n,\n2020-01-03,B", "utf-8"),
    "clean_cr_only.csv": ("time,title,id\r2020-01-02,A,1\r2020-01-03,B,2\r", "utf-8"),
    "clean_cp1252_semicolon.csv": ("time;title\n02.01.2020 10:00;Café € ‘news’\n13.01.2020;Plain\n", "cp1252"),
    "header_only.csv": ("time;title", "utf-8"),
    "quoted_delimiters.csv": (
        'id,time,title,summary\n1,2020-01-02 10:00,"Bitcoin, ether rally","a ""quoted"" word"\n'
        '2,2020-01-03 11:00,Plain title,\n3,2020-01-04,a"b,c\n4,2020-01-04,"x"y,z\n',
        "utf-8",
    ),
    "blank_and_ragged.csv": (
        "\n\ntime,title,id\n\n2020-01-02,A,1\n,,\n , ,\n2020-01-02, ,2\n,C,3\n2020-01-05,D,4,extra\n"
        "2020-01-06,E\n   \n\n",
        "utf-8",
    ),
    "crlf_bom.csv": (
        "\ufefftime,title,guid\r\n2020-01-02 10:00:00,A one,g1\r\n\r\n2020-01-02 10:00:01,  Spaced   title ,g2\r\n"
        ',,\r\n   \r\n2020-01-03,ragged\r\n2020-13-40,bad,g3\r\n"2020-01-04","Fine &amp; dandy",\r\n',
        "utf-8",
    ),
    "utf16_tab.tsv": ('time\ttitle\tid\r\n2020-01-02\tA, b\t1\r\n2020-01-02\t"q\tuoted ""x"""\t2\r\n', "utf-16"),
    "quoted_newline.csv": (
        'id,time,title,summary\n1,2020-01-02 10:00,"Two\nlines","sum\r\nmary"\n\n2,2020-01-03,After,\n'
        '3,bad,"three\n\nlines",x\n4,2020-01-05,last,\n',
        "utf-8",
    ),
    "open_quote_at_end.csv": ('id,time,title\n1,2020-01-02,ok\n2,2020-01-03,x "a\n3,2020-01-04,"open\n4,2020-01-05,more\n', "utf-8"),
    "mix.csv": (_random_mix(5, "\n"), "utf-8"),
    "mix_crlf.csv": (_random_mix(6, "\r\n"), "utf-8"),
}  # fmt: skip
# Which reader each file takes: "clean" (Arrow's CSV reader), "lines" (Arrow splits the
# lines, the csv module reads the quoted ones), "slow" (the csv module over the whole text).
PATHS = {
    "clean.csv": "clean", "clean_empty_rows.csv": "clean", "clean_cr_only.csv": "clean",
    "clean_cp1252_semicolon.csv": "clean", "header_only.csv": "lines", "quoted_delimiters.csv": "lines",
    "blank_and_ragged.csv": "lines", "crlf_bom.csv": "lines", "utf16_tab.tsv": "lines",
    "quoted_newline.csv": "slow", "open_quote_at_end.csv": "slow", "mix.csv": "lines", "mix_crlf.csv": "lines",
}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("headlines")
    for name, (text, encoding) in FILES.items():
        (folder / name).write_bytes(text.encode(encoding))
    return [folder / name for name in FILES] + sorted(FIXTURES.glob("*.csv")) + sorted(FIXTURES.glob("*.tsv"))


def _text(path: Path) -> tuple[str, str]:
    text, _ = decode(path.read_bytes(), None, path)
    return text, sniff_delimiter(text, path)


def _table(result: object) -> tuple[object, ...]:
    columns, cells, lines, bad = result  # type: ignore[misc]
    return columns, [values.to_pylist() for values in cells], list(map(int, lines)), bad


def _slow(path: Path) -> tuple[object, ...]:
    text, delimiter = _text(path)
    table = headline_import._csv_rows_slow(text, delimiter, path, {})
    return _table((table.columns, table.cells, table.lines, table.bad))


def test_each_file_takes_the_reader_it_was_made_for(files: list[Path]) -> None:
    for path in files[: len(FILES)]:
        text, delimiter = _text(path)
        clean = '"' not in text and headline_import._csv_rows_clean(text, delimiter) is not None
        lines = headline_import._csv_rows_fast(text, delimiter) is not None
        taken = "clean" if clean else "lines" if lines else "slow"
        assert taken == PATHS[path.name], path.name


def test_the_arrow_readers_give_the_csv_modules_table(files: list[Path]) -> None:
    for path in files:
        text, delimiter = _text(path)
        expected = _slow(path)
        fast = headline_import._csv_rows_fast(text, delimiter)
        if fast is not None:
            assert _table(fast) == expected, path.name
        clean = headline_import._csv_rows_clean(text, delimiter) if '"' not in text else None
        if clean is not None:
            assert _table(clean) == expected, path.name


def _outcome(path: Path, options: ReadOptions = ReadOptions()) -> object:
    try:
        imported = import_headlines(path, "csv:test", options=options, now=NOW)
    except InvalidInput as exc:
        return str(exc)
    frame = imported.records.frame  # type: ignore[attr-defined]
    raw = [record.raw for record in imported.records]
    return frame, raw, imported.rejects.counts, imported.rejects.examples, imported.lines, imported.detail


def test_an_import_stores_and_rejects_what_the_csv_module_path_does(
    files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [(path, ReadOptions()) for path in files] + [
        (FIXTURES / "date_time_columns.csv", ReadOptions(timezone="America/New_York"))
    ]
    fast = [_outcome(path, options) for path, options in cases]
    monkeypatch.setattr(headline_import, "_csv_rows_clean", lambda text, delimiter: None)
    monkeypatch.setattr(headline_import, "_csv_rows_fast", lambda text, delimiter: None)
    for (path, options), got in zip(cases, fast, strict=True):
        want = _outcome(path, options)
        if isinstance(want, str):
            assert got == want, path.name
            continue
        assert isinstance(got, tuple), path.name
        pd.testing.assert_frame_equal(got[0], want[0])  # values and dtypes
        assert got[1:] == want[1:], path.name
    assert any(
        isinstance(outcome, tuple) and len(outcome[0]) > 100 for outcome in fast
    )  # the mixes stored rows


def test_rows_of_the_frame_are_the_records_rows(files: list[Path]) -> None:
    imported = import_headlines(files[list(FILES).index("mix.csv")], "csv:test", now=NOW)
    frame = imported.records.frame  # type: ignore[attr-defined]
    assert len(frame) > 100 and imported.rejects.counts["bad_fields"] >= 1
    for index, record in enumerate(imported.records):
        row = record.row()
        assert row["title_key"] == frame["title_key"].iat[index] == title_key(record.title)
        assert row["payload_sha256"] == frame["payload_sha256"].iat[index]


_ODD = [
    "",
    " ",
    "  a  ",
    "A b",
    "x" * 600,
    "\u3000",
    "\x1c",
    "\u00a0x\u2028",
    "\t\n",
    "é  É",
    "a&amp;b",
    "#1 , 2",
]


def _strings(seed: int) -> list[str]:
    rnd = random.Random(seed)
    chars = 'abcXYZ09_ ,.-!#"\\\t&é\u00a0\u2028\x1c\x01'
    return [*_ODD, *("".join(rnd.choice(chars) for _ in range(rnd.randint(0, 14))) for _ in range(5000))]


def test_column_kernels_equal_the_row_functions() -> None:
    values = _strings(1)
    array = pa.array(values, pa.string())
    normalised = [normalise_title(value) for value in values]
    assert normalise_titles(array).to_pylist() == normalised
    assert title_keys(pa.array(normalised)).to_pylist() == [title_key(value) for value in normalised]
    keys = [title_key(value) for value in normalised]  # the raw titles' odd rows as the hint
    assert title_keys(pa.array(normalised), not_plain(array)).to_pylist() == keys
    assert title_keys(pa.array(normalised).slice(7, 50)).to_pylist() == [
        title_key(v) for v in normalised[7:57]
    ]
    assert strip(array).to_pylist() == [value.strip() for value in values]
    assert blank(array).tolist() == [not value.strip() for value in values]
    other = _strings(2)[: len(values)]
    assert payload_hashes(["title", 'b"q'], [array, pa.array(other)]) == [
        payload_sha256({"title": a, 'b"q': b}) for a, b in zip(values, other, strict=True)
    ]
    assert json.dumps(title_keys(pa.array([], pa.string())).to_pylist()) == "[]"


def _ascii_titles(seed: int, amp: bool = True) -> list[str]:
    """Printable ASCII titles (the whole-column paths): runs of up to nine spaces and of
    punctuation, at the ends too, keys over TITLE_KEY_CHARS, empty ones; ``&`` or not."""
    rnd = random.Random(seed)
    pieces = ["a", "Bc", "_", "0", "9z", " ", "  ", " " * 9, ",.-!#", "(x)", "~", *(["&"] if amp else [])]
    titles = ["", " ", "x" * 600, "ab " * 300, "  lead", "trail  ", "A" * 511 + " b"]
    return titles + ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12))) for _ in range(4000)]


def test_whole_column_paths_equal_the_row_functions() -> None:
    """The byte checks and the Arrow passes over a column's bytes at once (title keys, the
    plain check, the JSON escapes) against the per-row functions, on whole arrays, slices
    and large strings, with and without a character that sends values to Python."""
    odd = ['q"', "b\\s", "t\tab", "\u00e9", "&amp;"]
    for values in (_ascii_titles(3), _ascii_titles(5, amp=False), [*_ascii_titles(4), *odd]):
        normalised = [normalise_title(value) for value in values]
        arrays = (
            pa.array(normalised),
            pa.array(normalised).slice(5, 900),
            pa.array(normalised, pa.large_string()),
        )
        for array in arrays:
            expected = [title_key(value) for value in array.to_pylist()]
            assert title_keys(array).to_pylist() == expected
            assert title_keys(array, not_plain(array)).to_pylist() == expected
        array = pa.array(values)
        for part in (array, array.slice(3, 700), pa.array(normalised)):
            flagged = not_plain(part)
            # Exactly where the pattern matches: a flag too many would pass a "flagged or plain"
            # check, and so would a not_plain that flags every row.
            assert flagged.tolist() == [
                bool(re.search(headline_rows._NOT_PLAIN, v)) for v in part.to_pylist()
            ]
            for value, odd_value in zip(part.to_pylist(), flagged, strict=True):
                plain = normalise_title(value) == value and title_key(value) == _plain_key(value)
                assert odd_value or plain, value
            got = payload_hashes(["t", "u"], [part, part])
            assert got == [payload_sha256({"t": value, "u": value}) for value in part.to_pylist()]
    plain_column = pa.array([normalise_title(value) for value in _ascii_titles(5, amp=False)])
    assert headline_rows._not_plain_at_ends(plain_column) is not None  # the byte path was taken
    ends = pa.array([" a", "b ", "c d", "", " ", "x"]).slice(1)  # one space at an end: not plain
    assert headline_rows._not_plain_at_ends(ends) is not None
    assert not_plain(ends).tolist() == [True, False, False, True, False]


def _plain_key(value: str) -> str:
    """What the whole-column key makes of a title it takes as plain."""
    key = "".join(char.lower() if char.isalnum() or char == "_" else " " for char in value)
    return " ".join(key.split())[:512]
