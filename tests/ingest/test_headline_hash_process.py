"""Payload hashes made by a second process (services/ingest/headline_rows.py, ``PayloadHashes``).

From PARALLEL_HASH_ROWS rows a file's payload hashes are computed by another Python process
while the import parses the rest. The stored ``payload_sha256`` must be byte for byte what
``payload_sha256`` of each record's raw cells gives, whichever process made it, and a second
process that fails or cannot start must change nothing but where the work was done.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from services.common.errors import InvalidInput
from services.ingest import headline_rows
from services.ingest.headline_import import import_headlines
from services.ingest.headlines import payload_sha256

_CELLS = [
    "plain",
    'a "quoted" one',
    "back\\slash",
    "tab\there",
    "caf\u00e9 \u2014 \U0001f680",
    "",
    "  spaced  ",
]


def _file(path: Path, rows: int = 600) -> Path:
    """A CSV whose cells hold what JSON escapes and what it does not, one row per line."""
    lines = ["id,time,title,note"]
    for index in range(rows):
        note = _CELLS[index % len(_CELLS)].replace('"', '""')
        title = f"Title {index} {_CELLS[(index + 3) % len(_CELLS)]}".replace('"', '""')
        lines.append(f'g{index},2021-03-{1 + index % 28:02d} 10:{index % 60:02d},"{title}","{note}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _hashes(path: Path) -> tuple[pd.Series, list[str]]:
    """The stored hashes, and payload_sha256 of each record's raw cells (the reference)."""
    imported = import_headlines(path, "csv:hash")
    frame = imported.records.frame  # type: ignore[attr-defined]
    return frame["payload_sha256"], [payload_sha256(record.raw) for record in imported.records]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every hash process the import starts (from one row on)."""
    monkeypatch.setattr(headline_rows, "PARALLEL_HASH_ROWS", 1)
    processes: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def recording(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        process = real(*args, **kwargs)  # type: ignore[call-overload]
        processes.append(process)
        return process

    monkeypatch.setattr(headline_rows.subprocess, "Popen", recording)
    return processes


def test_the_second_process_makes_the_reference_hashes(
    tmp_path: Path, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path / "h.csv")
    stored, reference = _hashes(path)
    assert len(started) == 1 and started[0].returncode == 0  # it ran, and ended
    assert stored.tolist() == reference and len(set(reference)) == len(reference)
    monkeypatch.setattr(headline_rows, "PARALLEL_HASH_ROWS", 10**9)  # made here instead
    here, _ = _hashes(path)
    pd.testing.assert_series_equal(stored, here)  # values and dtype
    assert len(started) == 1


def test_a_failing_second_process_changes_nothing_stored(
    tmp_path: Path, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path / "h.csv")
    for program in ("import sys; sys.exit(3)", "import sys; sys.stdout.buffer.write(b'x' * 40)"):
        monkeypatch.setattr(headline_rows, "_HASHER", program)  # dies; or writes too little
        stored, reference = _hashes(path)
        assert stored.tolist() == reference
    assert [process.returncode for process in started] == [3, 0]


def test_a_second_process_that_cannot_start_changes_nothing_stored(
    tmp_path: Path, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(headline_rows.sys, "executable", str(tmp_path / "no-such-python"))
    stored, reference = _hashes(_file(tmp_path / "h.csv"))
    assert stored.tolist() == reference and not started


def test_a_file_refused_after_reading_leaves_no_process_running(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "no_title.csv"
    path.write_text("id,time,body\n" + "".join(f"g{i},2021-01-01,text {i}\n" for i in range(50)))
    with pytest.raises(InvalidInput, match="no title"):
        import_headlines(path, "csv:hash")
    assert len(started) == 1 and started[0].returncode is not None  # ended, not left behind


def test_hashes_not_wanted_are_stopped() -> None:
    columns = [pa.array([f"v{i}" for i in range(headline_rows.PARALLEL_HASH_ROWS)])]
    hashes = headline_rows.PayloadHashes(["name"], columns)
    process = hashes._process
    assert process is not None
    hashes.close()
    assert process.returncode is not None
    assert hashes.result().to_pylist()[:2] == [payload_sha256({"name": "v0"}), payload_sha256({"name": "v1"})]
