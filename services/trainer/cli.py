"""`hsig train ...`: run a job in the foreground, queue one, list or cancel jobs, serve the API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.common.errors import InvalidInput
from services.common.settings import get_settings
from services.trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from services.trainer.publish import PublishedAdapter

app = typer.Typer(help="The trainer service: fine-tune LoRA, QLoRA or full adapters.", no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="A TrainConfig as JSON (see `hsig train example-config`).")]


def _load_config(path: Path, name: str | None = None):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from services.trainer.config import TrainConfig

    if not path.is_file():
        raise InvalidInput(f"config file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
        if name:
            raw["name"] = name
        return TrainConfig.model_validate(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise InvalidInput(f"{path}: {where}: {first['msg']}") from exc


@app.command("example-config")
def example_config(
    method: Annotated[str, typer.Option(help="lora, qlora or full.")] = "lora",
    rows: Annotated[Path | None, typer.Option(help="A labelled-rows file; default: the database.")] = None,
) -> None:
    """Print a TrainConfig to start from (btc-trend on the tiny model)."""
    from services.trainer.config import TrainConfig

    data = {"source": "file", "path": str(rows)} if rows else {"source": "database"}
    config = TrainConfig.model_validate(
        {
            "name": f"btc-{method}",
            "method": method,
            "data": data,
            "optim": {"epochs": 1, "learning_rate": 5e-3},
        }
    )
    typer.echo(config.model_dump_json(indent=2))


@app.command("run")
def run(
    config_path: ConfigArg,
    name: Annotated[str | None, typer.Option(help="Override the adapter name.")] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Checkpoints (resumed from); default <data_dir>/checkpoints/cli-<name>."),
    ] = None,
) -> None:
    """Train in the foreground with a progress bar; a rerun after a crash resumes."""
    from tqdm import tqdm

    from services.trainer.distributed import end_finished_rank, launched_distributed
    from services.trainer.loop import LoopHooks, StepReport
    from services.trainer.training import prepare, train, train_distributed

    settings = get_settings(TrainerSettings)
    config = _load_config(config_path, name)
    distributed = launched_distributed()  # refuses a launch it cannot run (DeepSpeed) first
    prepared = prepare(config, settings)
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        typer.echo(prepared.dataset.summary())
    bar = tqdm(total=prepared.total_steps, unit="step", desc=config.name, disable=not main_process)

    def on_step(report: StepReport) -> None:
        bar.n = report.step
        shown = {"loss": f"{report.loss:.4f}"}
        if report.validation_loss is not None:  # the latest evaluation (optim.eval_steps)
            shown["val_loss"] = f"{report.validation_loss:.4f}"
        bar.set_postfix(shown, refresh=False)
        bar.refresh()

    checkpoints = checkpoint_dir or settings.checkpoints_path / f"cli-{config.name}"
    if distributed:  # under a launcher: one process per device, DDP or FSDP
        published = train_distributed(config, settings, LoopHooks(on_step=on_step), prepared, checkpoints)
    else:
        published = train(
            config, settings, checkpoint_dir=checkpoints, hooks=LoopHooks(on_step=on_step), prepared=prepared
        )
    bar.close()
    if published is not None:  # None: another rank published it
        _echo_published(published)
    if distributed:  # every rank's work is done: end it here (distributed.py says why)
        end_finished_rank()


def _echo_published(published: PublishedAdapter) -> None:
    manifest = published.manifest
    evaluation = manifest.extra.get("evaluation") or {}
    typer.echo(
        f"published {published.name} v{published.version} at {published.path}\n"
        f"  {manifest.trainable_parameters:,} of {manifest.total_parameters:,} parameters trained; "
        f"{manifest.seconds_per_epoch:.1f} s/epoch; {manifest.tokens_per_second:,.0f} tokens/s; "
        f"peak memory {manifest.peak_memory_bytes / 2**20:,.0f} MiB ({manifest.peak_memory_kind})\n"
        f"  validation loss {manifest.extra['validation_loss_before']:.4f} -> {manifest.extra['validation_loss_after']:.4f}"
        + (
            f"; {evaluation['window']} accuracy {evaluation['accuracy']:.3f} "
            f"(majority {evaluation['majority_baseline']:.3f}, {evaluation['rows']} rows)"
            if evaluation.get("accuracy") is not None
            else ""
        )
    )


@app.command("submit")
def submit(config_path: ConfigArg, name: Annotated[str | None, typer.Option()] = None) -> None:
    """Validate a job and put it in the queue (a running `hsig train serve` picks it up)."""
    from services.trainer import jobs
    from services.trainer.training import prepare

    settings = get_settings(TrainerSettings)
    config = _load_config(config_path, name)
    prepared = prepare(config, settings)
    job = jobs.submit(
        settings.resolved_database_url, config.model_dump(mode="json"), config.name, prepared.total_steps
    )
    typer.echo(f"queued job {job.id} ({prepared.total_steps} steps)")


@app.command("jobs")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """List training jobs, newest first."""
    from services.trainer import jobs

    found = jobs.list_jobs(get_settings(TrainerSettings).resolved_database_url, state, limit)
    typer.echo(f"{'id':>5}  {'state':<10} {'adapter':<24} {'step':>11}  {'loss':>8}  error")
    for job in found:
        loss = f"{job.loss:.4f}" if job.loss is not None else "-"
        steps = f"{job.step}/{job.total_steps}"
        typer.echo(
            f"{job.id:>5}  {job.state:<10} {job.adapter_name or '-':<24} {steps:>11}  {loss:>8}  {job.error or ''}"
        )


@app.command("cancel")
def cancel(job_id: int) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    from services.trainer import jobs

    job = jobs.cancel(get_settings(TrainerSettings).resolved_database_url, job_id)
    typer.echo(f"job {job.id}: {job.state}")


@app.command("worker")
def worker(once: Annotated[bool, typer.Option(help="Run at most one job, then exit.")] = False) -> None:
    """Work the queue without the HTTP API (several can share one PostgreSQL queue)."""
    from services.trainer.worker import Worker, run_one

    settings = get_settings(TrainerSettings)
    if once:
        job_id = run_one(settings)
        typer.echo(f"ran job {job_id}" if job_id is not None else "no queued job")
        return
    loop = Worker(settings)
    loop.run()


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default HSIG_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default HSIG_PORT (8002).")] = None,
    worker: Annotated[bool, typer.Option(help="Run the job worker in this process.")] = True,
) -> None:
    """The trainer API (POST/GET /v1/jobs, cancel, /healthz, /readyz, /metrics) and its worker."""
    import uvicorn

    from services.trainer.app import build_app

    settings = get_settings(TrainerSettings).model_copy(update={"worker_enabled": worker})
    uvicorn.run(build_app(settings), host=host or settings.host, port=port or settings.port, log_config=None)
