"""The commands that span services, shown inside the service groups they belong to for a user.

``hsig backtest reproduce`` (ingest, trainer, inference and backtest), ``hsig backtest
walk-forward`` (trainer and backtest, fold by fold) and ``hsig ingest replay``
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


def walk_forward(
    id: Annotated[
        str | None, typer.Option("--id", help="Name of this walk-forward; the same id resumes it.")
    ] = None,
    model: Annotated[
        str, typer.Option(help="tiny (built here), a model directory or a Hugging Face id.")
    ] = "tiny",
    method: Annotated[
        list[str] | None, typer.Option(help="lora, qlora or full (repeat; default lora).")
    ] = None,
    train_mode: Annotated[
        str, typer.Option(help="expanding (from the first row) or rolling (train-days long).")
    ] = "expanding",
    train_days: Annotated[float, typer.Option(help="The first fold's training window, in days.")] = 90.0,
    test_days: Annotated[float, typer.Option(help="Each fold's test window, in days.")] = 30.0,
    step_days: Annotated[
        float | None, typer.Option(help="From one test window to the next (default: test-days).")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="Folds (default 3; 0: as many as fit).")] = 3,
    embargo_seconds: Annotated[
        float | None, typer.Option(help="Gap before each window (default: the longest label span).")
    ] = None,
    start: When = None,
    end: When = None,
    epochs: Annotated[float, typer.Option(help="Fine-tuning epochs.")] = 1.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop each fine-tune after N steps.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    base: Annotated[bool, typer.Option("--base/--no-base", help="Score the untuned base too.")] = True,
    baseline: Annotated[
        list[str] | None, typer.Option(help="Baseline to score (repeat; default all; none for none).")
    ] = None,
    bootstrap_reps: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    run_jobs: Annotated[
        str, typer.Option(help="inline: this process runs the training jobs; queue: a trainer service does.")
    ] = "inline",
) -> None:
    """Walk-forward: per fold, train each method on the rows before its test window, score it there, pool."""
    from services.backtest.settings import BacktestSettings
    from services.common.errors import InvalidInput
    from services.common.settings import get_settings
    from services.pipeline.walk_forward import WalkForwardOptions, run_walk_forward

    if run_jobs not in ("inline", "queue"):
        raise InvalidInput(f"--run-jobs must be inline or queue, not {run_jobs!r}", param="run_jobs")
    baselines = None if baseline is None else tuple(b for b in baseline if b != "none")
    options = WalkForwardOptions(
        id=id,
        model=model,
        methods=tuple(method or ["lora"]),
        train_mode=train_mode,  # type: ignore[arg-type]  # checked by plan_folds
        train_days=train_days,
        test_days=test_days,
        step_days=step_days,
        k=k or None,
        embargo_seconds=embargo_seconds,
        start=_utc(start),
        end=_utc(end),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        include_base=base,
        baselines=baselines,
        bootstrap_reps=bootstrap_reps,
        seed=seed,
        run_jobs=run_jobs,  # type: ignore[arg-type]
    )
    result = run_walk_forward(
        get_settings(BacktestSettings), options, progress=lambda line: typer.echo(line, err=True)
    )
    typer.echo(result.summary_table)
    for fold in result.state["folds"]:
        where = fold.get("backtest", {}).get("html_path") or fold.get("error") or fold["state"]
        typer.echo(f"fold {fold['fold']}: {fold['state']}: {where}")
    typer.echo(f"walk-forward {result.id}\nJSON: {result.state_path}")


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
    backtest_app.command("walk-forward")(walk_forward)
