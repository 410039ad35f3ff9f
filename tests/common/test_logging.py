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
