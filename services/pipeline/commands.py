"""The commands that span services, shown inside the service groups they belong to for a user.

``hsig backtest reproduce`` (ingest, trainer, inference and backtest) and ``hsig ingest replay``
/ ``hsig ingest bundled`` (the bundled data through the local feed and exchange servers of
``services.pipeline.replay_server``). The services' own CLIs cannot import this package, so
``services.pipeline.cli`` adds these to their typer apps. Heavy work is imported inside each
command.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.backtest.cli import When

if TYPE_CHECKING:
    from services.ingest.settings import IngestSettings


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else (moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _ingest_settings() -> IngestSettings:
    from services.common.db.migrate import upgrade
    from services.common.settings import get_settings
    from services.ingest.settings import IngestSettings

    settings = get_settings(IngestSettings)
    upgrade(settings.resolved_database_url)
    return settings


def reproduce(
    model: Annotated[
        str, typer.Option(help="tiny (built here), a model directory or a Hugging Face id.")
    ] = "tiny",
    train_end: When = None,
    validation_end: When = None,
    test_end: When = None,
    epochs: Annotated[float, typer.Option(help="Fine-tuning epochs (both methods).")] = 1.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop each fine-tune after N steps.")] = None,
    data_dir: Annotated[Path, typer.Option(help="The bundled data folder.")] = Path("data"),
    ingest: Annotated[
        bool | None, typer.Option("--ingest/--no-ingest", help="Default: ingest only when no rows exist.")
    ] = None,
    bootstrap_reps: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    inference_url: Annotated[
        str | None,
        typer.Option(
            help="Score base, LoRA and full fine-tune through this inference service (told of each)."
        ),
    ] = None,
) -> None:
    """The research note's comparison on the bundled 2017-2020 data: base, LoRA, full, baselines."""
    from services.backtest.settings import BacktestSettings
    from services.common.settings import get_settings
    from services.pipeline.reproduce import ReproduceOptions
    from services.pipeline.reproduce import reproduce as run_reproduce

    defaults = ReproduceOptions()
    options = ReproduceOptions(
        model=model,
        train_end=_utc(train_end) or defaults.train_end,
        validation_end=_utc(validation_end) or defaults.validation_end,
        test_end=_utc(test_end),
        epochs=epochs,
        max_steps=max_steps,
        data_dir=data_dir,
        ingest=ingest,
        bootstrap_reps=bootstrap_reps,
        seed=seed,
        inference_url=inference_url,
    )
    result = run_reproduce(get_settings(BacktestSettings), options, progress=typer.echo)
    for note in result.report["notes"]:
        typer.echo(f"* {note}")
    typer.echo(result.summary_table)
    typer.echo(f"run {result.run_id}\nJSON: {result.json_path}\nHTML: {result.html_path}")


def replay(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free one).")] = 8011,
    data_dir: Annotated[Path, typer.Option(help="The project's data/ folder.")] = Path("data"),
) -> None:
    """Serve the bundled feeds and hourly candles as a local CNBC feed and Coinbase Exchange.

    Point the service at it: HSIG_EXCHANGE=coinbaseexchange HSIG_EXCHANGE_API_URL=<url>
    HSIG_FEED_URLS=cnbc-finance-snapshots=<url>/rss/cnbc-finance HSIG_CANDLE_SINCE=2017-07-01.
    """
    import time

    from services.pipeline.bundled import FEED_PATH, bundled_replay_server

    server, first, now = bundled_replay_server(data_dir, port)
    with server:
        typer.echo(
            f"exchange {server.url} (coinbaseexchange, BTC/USD 1h from {first:%Y-%m-%d}, clock {now:%Y-%m-%d %H:%M})",
            err=True,
        )
        typer.echo(f"feed     {server.url}{FEED_PATH} (the saved snapshots, one per poll)", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def bundled(
    data_dir: Annotated[Path, typer.Option(help="The project's data/ folder.")] = Path("data"),
) -> None:
    """Ingest and label the bundled data the way live data comes in (local feed and exchange servers)."""
    from services.pipeline.bundled import ingest_bundled_data

    summary = ingest_bundled_data(
        _ingest_settings(), data_dir, progress=lambda line: typer.echo(line, err=True)
    )
    typer.echo(json.dumps(summary, default=str, indent=2))


def attach(ingest_app: typer.Typer, backtest_app: typer.Typer) -> None:
    """Add these commands to the service groups, after the services' own commands."""
    ingest_app.command("replay")(replay)
    ingest_app.command("bundled")(bundled)
    backtest_app.command("reproduce")(reproduce)
