"""`hsig ingest ...` commands. Heavy work is imported inside each command.

`hsig ingest replay` and `hsig ingest bundled` (the bundled data through a local feed and
exchange server) are added to this group by services/pipeline/cli.py.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from services.common.settings import get_settings
from services.ingest.settings import IngestSettings

app = typer.Typer(
    help="The ingest service: feeds, candles, CSV backfills, labelled rows.", no_args_is_help=True
)


def _settings() -> IngestSettings:
    from services.common.db.migrate import upgrade

    settings = get_settings(IngestSettings)
    upgrade(settings.resolved_database_url)
    return settings


def _print(outcome: object) -> None:
    typer.echo(json.dumps(vars(outcome) if hasattr(outcome, "__dict__") else outcome, default=str))


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address; default HSIG_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default HSIG_PORT (8001).")] = None,
) -> None:
    """Run the HTTP service with the scheduler polling feeds and candles."""
    import uvicorn

    from services.ingest.app import build_app

    settings = get_settings(IngestSettings)
    uvicorn.run(build_app(settings), host=host or settings.host, port=port or settings.port, log_level="info")


@app.command("run")
def run(
    feeds: Annotated[bool, typer.Option(help="Poll the feeds.")] = True,
    candles: Annotated[bool, typer.Option(help="Pull candles.")] = True,
    label: Annotated[bool, typer.Option(help="Label what is newly labellable.")] = True,
) -> None:
    """One cycle now; prints what each source did (JSON). Exit 1 if any source failed."""
    from services.ingest.cycle import run_cycle

    report = run_cycle(_settings(), feeds=feeds, candles=candles, label=label)
    typer.echo(json.dumps(report.summary(), default=str, indent=2))
    if any(not source.ok for source in report.sources):
        raise typer.Exit(1)


@app.command("backfill-headlines")
def backfill_headlines(
    path: Annotated[Path, typer.Argument(help="CSV file, or JSON lines (.jsonl, .ndjson).")],
    kaggle_cnbc: Annotated[
        bool, typer.Option(help="The Kaggle CNBC layout (Headlines, Time, Description; US Eastern).")
    ] = False,
    title_column: Annotated[
        str | None, typer.Option(help="Column holding the headline; default: title, headline...")
    ] = None,
    time_column: Annotated[
        str | None,
        typer.Option(
            help="Column holding the time; default: published, time, date... A column of times of"
            " day alone (04:24, 4:24 PM) is joined to the date column (date, day...); DATE+TIME"
            " names both."
        ),
    ] = None,
    summary_column: Annotated[
        str | None, typer.Option(help="Summary column; default: summary, description... if any.")
    ] = None,
    guid_column: Annotated[
        str | None, typer.Option(help="Unique id column; default: guid, id if any.")
    ] = None,
    timezone: Annotated[str, typer.Option(help="Zone of times without an offset (IANA name).")] = "UTC",
    time_format: Annotated[
        str | None, typer.Option(help="strptime format for every time; default: recognised per row.")
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="Field separator; default: sniffed (, ; tab |).")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding; default: BOM, else UTF-8, else cp1252.")
    ] = None,
    dayfirst: Annotated[
        bool | None,
        typer.Option(
            "--dayfirst/--no-dayfirst",
            help="Numeric dates day-first (5-7-2022 is 5 July); default: from the file.",
        ),
    ] = None,
) -> None:
    """Import a headline file (idempotent: stored headlines are skipped). Rows with a time
    lacking a day or year, or outside the plausible range, are rejected and counted by line."""
    from services.ingest.backfill import backfill_headline_csv, backfill_kaggle_cnbc

    settings = _settings()
    if kaggle_cnbc:
        outcome = backfill_kaggle_cnbc(settings, path)
    else:
        outcome = backfill_headline_csv(
            settings,
            path,
            title_column,
            time_column,
            timezone,
            summary_column,
            guid_column,
            time_format,
            delimiter=delimiter,
            encoding=encoding,
            dayfirst=dayfirst,
        )
    _print(outcome)


@app.command("backfill-candles")
def backfill_candles(
    path: Annotated[
        Path | None,
        typer.Argument(help="Candle file (CSV, Binance zip, ccxt JSON); omit to pull through ccxt."),
    ] = None,
    exchange: Annotated[
        str | None, typer.Option(help="Exchange id to store under; default HSIG_EXCHANGE.")
    ] = None,
    symbol: Annotated[str | None, typer.Option(help="Symbol; default HSIG_SYMBOL.")] = None,
    timeframe: Annotated[
        str | None,
        typer.Option(
            help="Timeframe; a file's must match its spacing (default: inferred); ccxt: HSIG_TIMEFRAME."
        ),
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Pull up to this UTC time (ccxt only).")] = None,
    layout: Annotated[
        str | None,
        typer.Option(help="Force a layout: cryptodatadownload, yahoo, binance, kraken, ccxt-json, generic."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(help="Generic layout: KEY=COLUMN for time, open, high, low, close, volume (repeat)."),
    ] = None,
    time_unit: Annotated[
        str | None, typer.Option(help="Unit of numeric times: s, ms or us (default: from their size).")
    ] = None,
    time_format: Annotated[
        str | None, typer.Option(help="strptime format of text times (default: ISO 8601, UTC).")
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(help="Field separator; default: sniffed (, ; tab). With ; a decimal comma is read."),
    ] = None,
) -> None:
    """Store candles from a file (layout read from its header), or pull them through ccxt.

    Bad rows are rejected and counted by reason with line numbers, the rest stored; a file in
    no known layout stores nothing (exit 2)."""
    settings = _settings()
    exchange, symbol = exchange or settings.exchange, symbol or settings.symbol
    if path is not None:
        from services.ingest.backfill import backfill_candles_csv
        from services.ingest.candle_import import ImportOptions, parse_column_mapping

        options = ImportOptions(layout, parse_column_mapping(column or []), time_unit, time_format, delimiter)
        _print(backfill_candles_csv(settings, path, exchange, symbol, timeframe, options))
        return
    timeframe = timeframe or settings.timeframe
    from services.ingest.cycle import pull_market

    local = settings.model_copy(update={"exchange": exchange, "symbol": symbol, "timeframe": timeframe})
    until_utc = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    outcome = pull_market(
        local,
        datetime.now(UTC),
        until_utc,
        progress=lambda pages, rows: typer.echo(f"page {pages}: {rows} candles", err=True),
    )
    _print(outcome)


@app.command("label")
def label() -> None:
    """Label every headline whose candles are stored and that has no row yet."""
    from services.ingest.cycle import label_pass

    outcomes = label_pass(_settings())
    for outcome in outcomes:
        _print(outcome)
    if any(not outcome.ok for outcome in outcomes):
        raise typer.Exit(1)


@app.command("rows")
def rows(
    start: Annotated[datetime | None, typer.Option(help="First headline time, UTC (inclusive).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Last headline time, UTC (exclusive).")] = None,
    format: Annotated[str, typer.Option(help="jsonl, csv or parquet.")] = "jsonl",
    out: Annotated[Path | None, typer.Option(help="File to write; default stdout (not parquet).")] = None,
) -> None:
    """Export labelled rows for a time range."""
    from services.common.db import session_scope
    from services.common.errors import InvalidInput
    from services.ingest.export import query_rows, render_rows

    if format == "parquet" and out is None:
        raise InvalidInput("parquet needs --out FILE", param="out")
    settings = _settings()
    as_utc = lambda moment: moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment  # noqa: E731
    with session_scope(settings.resolved_database_url) as session:
        payload = render_rows(query_rows(session, as_utc(start), as_utc(end)), format)  # type: ignore[arg-type]
    if out is None:
        sys.stdout.buffer.write(payload)
    else:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(out)
        typer.echo(f"wrote {out}", err=True)


@app.command("stats")
def stats() -> None:
    """Headline, candle, label and gap counts, and each source's state."""
    from services.common.db import session_scope
    from services.ingest.export import stats as collect

    with session_scope(_settings().resolved_database_url) as session:
        typer.echo(json.dumps(collect(session), default=str, indent=2))
