"""`hsig backtest ...`: run a backtest, serve the API, list reports.

`hsig backtest reproduce` (the research note across ingest, trainer and backtest) is added to
this group by the composition root, services/pipeline/cli.py: a service imports no other.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.common.errors import InvalidInput

if TYPE_CHECKING:
    from services.backtest.settings import BacktestSettings

app = typer.Typer(help="The backtest service: score predictors on out-of-time rows.", no_args_is_help=True)

When = Annotated[
    datetime | None, typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
]
# The predictor options every scoring command takes (run, ablation), written once.
Adapters = Annotated[
    list[str] | None, typer.Option("--adapter", help="Adapter scored by the inference service (repeat).")
]
LocalModel = Annotated[str | None, typer.Option(help="Base model directory scored in-process.")]
LocalAdapters = Annotated[
    list[str] | None,
    typer.Option("--local-adapter", help="Adapter or full fine-tune directory on --local-model (repeat)."),
]
OpenAIModel = Annotated[str | None, typer.Option(help="Model of an OpenAI-compatible endpoint.")]
OpenAIUrl = Annotated[str | None, typer.Option(help="Base URL of that endpoint (default OpenAI's).")]
OpenAIKeyEnv = Annotated[
    str | None,
    typer.Option(help="Environment variable holding its key (this run only; else HSIG_OPENAI_ENDPOINTS)."),
]
Market = Annotated[str | None, typer.Option()]
BootstrapReps = Annotated[int | None, typer.Option(help="Block-bootstrap resamples.")]
AllowOverlap = Annotated[bool, typer.Option(help="Score adapters on their own training window (marked).")]


def _utc(moment: datetime | None) -> datetime | None:
    from datetime import UTC

    return None if moment is None else (moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _settings():  # type: ignore[no-untyped-def]
    from services.backtest.settings import BacktestSettings
    from services.common.settings import get_settings

    return get_settings(BacktestSettings)


def _config_from_file(path: Path):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from services.backtest.schemas import BacktestConfig

    if not path.is_file():
        raise InvalidInput(f"config file {path} does not exist")
    try:
        return BacktestConfig.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{path}: {'.'.join(map(str, first['loc'])) or 'config'}: {first['msg']}") from exc


def _predictors(
    baselines: list[str] | None,
    adapters: list[str] | None,
    base: bool,
    local_model: str | None,
    local_adapters: list[str] | None,
    openai_model: str | None,
    openai_url: str | None,
    openai_key_env: str,
) -> list:
    from services.backtest.schemas import BASELINES, BaselineSpec, LocalSpec, OpenAISpec, ServiceSpec
    from services.common.schemas import BASE_MODEL_NAME

    chosen = BASELINES if baselines is None else [b for b in baselines if b != "none"]
    unknown = sorted(set(chosen) - set(BASELINES))
    if unknown:
        raise InvalidInput(
            f"unknown baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)} or none"
        )
    specs: list = [BaselineSpec(name=name) for name in chosen]  # type: ignore[arg-type]
    if base:
        specs.append(ServiceSpec(adapter=BASE_MODEL_NAME))
    specs += [ServiceSpec(adapter=name) for name in adapters or []]
    if local_adapters and not local_model:
        raise InvalidInput("--local-adapter needs --local-model (the base the adapter was trained on)")
    if local_model:
        specs.append(LocalSpec(model=local_model, label="local:base"))
        specs += [LocalSpec(model=local_model, adapter_dir=path) for path in local_adapters or []]
    if openai_model:
        specs.append(OpenAISpec(model=openai_model, base_url=openai_url))
    if not specs:
        raise InvalidInput("no predictors: give at least one baseline, adapter or model")
    return specs


@app.command("run")
def run(
    start: When = None,
    end: When = None,
    config: Annotated[
        Path | None, typer.Option(help="A BacktestConfig as JSON; other options are ignored.")
    ] = None,
    baseline: Annotated[
        list[str] | None, typer.Option(help="Baselines to include (repeat); default all; 'none' for none.")
    ] = None,
    adapter: Adapters = None,
    base: Annotated[
        bool, typer.Option(help="Also score the untuned base model through the inference service.")
    ] = False,
    local_model: LocalModel = None,
    local_adapter: LocalAdapters = None,
    openai_model: OpenAIModel = None,
    openai_url: OpenAIUrl = None,
    openai_key_env: OpenAIKeyEnv = None,
    symbol: Market = None,
    horizon: Market = None,
    exchange: Market = None,
    fees_bps: Annotated[float | None, typer.Option(help="Fees in basis points of notional traded.")] = None,
    decrease: Annotated[str | None, typer.Option(help="short or flat on a Decrease prediction.")] = None,
    bootstrap_reps: BootstrapReps = None,
    seed: Annotated[int, typer.Option()] = 0,
    allow_overlap: AllowOverlap = False,
    post_cutoff_only: Annotated[
        bool, typer.Option(help="Score only rows after the latest knowledge cutoff of the models scored.")
    ] = False,
    title: Annotated[str, typer.Option()] = "Backtest",
) -> None:
    """Score predictors on labelled rows in [start, end); print the summary and the report paths."""
    from pydantic import ValidationError

    from services.backtest.runner import run_backtest
    from services.backtest.schemas import BacktestConfig

    if config is not None:
        backtest = _config_from_file(config)
    else:
        specs = _predictors(
            baseline, adapter, base, local_model, local_adapter, openai_model, openai_url, openai_key_env
        )
        try:
            backtest = BacktestConfig(
                title=title, start=_utc(start), end=_utc(end), symbol=symbol, horizon=horizon, exchange=exchange,
                predictors=specs, fees_bps=fees_bps, decrease_position=decrease, bootstrap_reps=bootstrap_reps,
                seed=seed, allow_overlap=allow_overlap, post_cutoff_only=post_cutoff_only,
            )  # fmt: skip
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidInput(f"{'.'.join(map(str, first['loc'])) or 'options'}: {first['msg']}") from exc
    settings = _settings()
    if openai_model and (openai_url or openai_key_env):
        # Whoever runs the CLI is the operator: its endpoint and key join the allow-list for this run.
        settings = _with_openai_endpoint(settings, openai_url, openai_key_env)
    result = run_backtest(settings, backtest, trigger="cli")
    typer.echo(result.summary_table)
    typer.echo(f"run {result.run_id}\nJSON: {result.json_path}\nHTML: {result.html_path}")


def _with_openai_endpoint(
    settings: BacktestSettings, url: str | None, key_env: str | None
) -> BacktestSettings:
    from services.backtest.predictors.outbound import OPENAI_DEFAULT_URL, host_of

    host = host_of(url or OPENAI_DEFAULT_URL, "--openai-url")
    key_env = key_env if key_env is not None else settings.openai_key_envs().get(host, "OPENAI_API_KEY")
    endpoints = [
        entry for entry in settings.openai_endpoints if entry.partition("=")[0].strip().lower() != host
    ]
    return settings.model_copy(update={"openai_endpoints": [*endpoints, f"{host}={key_env}"]})


@app.command("rolling")
def rolling() -> None:
    """Run the scheduled rolling-window backtest of every registered adapter once, now."""
    from services.backtest.runner import run_backtest
    from services.backtest.schedule import rolling_config

    settings = _settings()
    result = run_backtest(settings, rolling_config(settings), trigger="schedule")
    typer.echo(result.summary_table)
    typer.echo(f"run {result.run_id}\nHTML: {result.html_path}")


@app.command("reports")
def reports(
    limit: Annotated[int, typer.Option(min=1)] = 20,
    state: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
) -> None:
    """List backtest runs, newest first."""
    from services.backtest.store import list_runs

    for run in list_runs(_settings().resolved_database_url, state, limit):
        created = run.created_at.strftime("%Y-%m-%d %H:%M")
        where = run.html_path or (run.error or "")[:100]
        typer.echo(f"{run.id:>5}  {created}  {run.trigger:<8} {run.state:<9} x{run.attempts}  {where}")


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Serve the HTTP API (default 127.0.0.1:8003) with the scheduler."""
    from services.backtest.app import serve as serve_app

    settings = _settings()
    serve_app(
        settings.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    )


@app.command("ablation")
def ablation(
    start: When = None,
    end: When = None,
    adapter: Adapters = None,
    base: Annotated[
        bool, typer.Option(help="Score the untuned base model through the inference service.")
    ] = False,
    local_model: LocalModel = None,
    local_adapter: LocalAdapters = None,
    openai_model: OpenAIModel = None,
    openai_url: OpenAIUrl = None,
    openai_key_env: OpenAIKeyEnv = None,
    symbol: Market = None,
    horizon: Market = None,
    exchange: Market = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N rows of the window.")] = None,
    bootstrap_reps: BootstrapReps = None,
    seed: Annotated[int, typer.Option()] = 0,
    allow_overlap: AllowOverlap = False,
) -> None:
    """Score the same rows as written and with entity names masked; the paired accuracy difference."""
    from pydantic import ValidationError

    from services.backtest.ablation import run_ablation
    from services.backtest.schemas import BacktestConfig

    if not (adapter or base or local_model or openai_model):
        raise InvalidInput(
            "the ablation needs a model that reads headlines: --local-model, --adapter, --base or --openai-model"
        )
    specs = _predictors(
        ["none"], adapter, base, local_model, local_adapter, openai_model, openai_url, openai_key_env
    )
    try:
        config = BacktestConfig(
            title="Anonymisation ablation", start=_utc(start), end=_utc(end), symbol=symbol, horizon=horizon,
            exchange=exchange, predictors=specs, bootstrap_reps=bootstrap_reps, seed=seed,
            allow_overlap=allow_overlap,
        )  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(map(str, first['loc'])) or 'options'}: {first['msg']}") from exc
    settings = _settings()
    if openai_model and (openai_url or openai_key_env):
        settings = _with_openai_endpoint(settings, openai_url, openai_key_env)
    files = run_ablation(settings, config, limit)
    for row in files.report["results"]:
        interval = row["interval"] and f"[{row['interval'][0]:+.4f}, {row['interval'][1]:+.4f}]"
        typer.echo(
            f"{row['predictor']}: accuracy {row['accuracy_as_written']:.4f} as written, "
            f"{row['accuracy_masked']:.4f} masked, difference {row['difference']:+.4f} {interval or '(no interval)'} "
            f"over {row['windows']} label windows; {row['answers_changed']} answers changed"
        )
    typer.echo(
        f"headlines masked: {files.report['data']['headlines_masked']} of {files.report['data']['rows']}"
    )
    typer.echo(f"JSON: {files.json_path}\nHTML: {files.html_path}")


@app.command("probe")
def probe(
    local_model: Annotated[str, typer.Option(help="The untuned base model's directory, scored in-process.")],
    start: When = None,
    end: When = None,
    before: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
            help="The model's knowledge cutoff: only label windows before it are asked about.",
        ),
    ] = None,
    sample: Annotated[int, typer.Option(help="Label windows asked about (drawn without replacement).")] = 200,
    symbol: Annotated[str | None, typer.Option()] = None,
    horizon: Annotated[str | None, typer.Option()] = None,
    exchange: Annotated[str | None, typer.Option()] = None,
    bootstrap_reps: Annotated[int | None, typer.Option(help="Block-bootstrap resamples.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Ask the base model for Bitcoin's direction with no headline: how far above chance it answers."""
    from services.backtest.probe import ProbeOptions, run_probe

    if bootstrap_reps is not None and bootstrap_reps < 0:
        raise InvalidInput("--bootstrap-reps must be 0 or more")
    options = ProbeOptions(
        model=local_model, start=_utc(start), end=_utc(end), before=_utc(before), sample=sample, seed=seed,
        bootstrap_reps=bootstrap_reps, symbol=symbol, horizon=horizon, exchange=exchange,
    )  # fmt: skip
    files = run_probe(_settings(), options)
    row = files.report["results"][0]
    interval = (
        row["accuracy_interval"] and f"[{row['accuracy_interval'][0]:.4f}, {row['accuracy_interval'][1]:.4f}]"
    )
    typer.echo(
        f"{row['questions']} questions: accuracy {row['accuracy']:.4f} {interval or '(no interval)'}, "
        f"{row['above_chance']:+.4f} above chance, {row['above_majority']:+.4f} above the majority rate "
        f"{row['majority_rate']:.4f} ({row['windows']} label windows)"
    )
    typer.echo(f"JSON: {files.json_path}\nHTML: {files.html_path}")
