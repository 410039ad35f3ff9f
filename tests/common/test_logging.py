"""Log lines: credentials masked whatever logger wrote them (issue 14 item 9)."""

from __future__ import annotations


def test_log_lines_leave_with_credentials_masked() -> None:
    import logging

    from services.common.logging import RedactingFormatter

    record = logging.LogRecord(
        "ccxt",
        logging.DEBUG,
        __file__,
        1,
        "GET %s",
        ("https://bot:hunter2@api.example/x?apikey=s3cr3t&n=1",),
        None,
    )
    line = RedactingFormatter("%(message)s").format(record)
    assert "hunter2" not in line and "s3cr3t" not in line
    assert "api.example/x" in line and "n=1" in line


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A CLI run in-process after stderr was swapped (and the old stream closed) still logs
    where stderr is now: no '--- Logging error ---' on a closed stream."""
    import io
    import logging
    import sys

    from services.common.logging import configure_logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("INFO")
    first.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    logging.getLogger("hsig.test").warning("after the swap")
    assert "after the swap" in now.getvalue()
