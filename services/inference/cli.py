"""`hsig inference ...` commands."""

from __future__ import annotations

import json
import signal
import threading

import typer

from services.common.settings import get_settings
from services.inference.settings import InferenceSettings

app = typer.Typer(help="The inference service.", no_args_is_help=True)


@app.command("serve")
def serve() -> None:
    """Start Ray locally (or join HSIG_RAY_ADDRESS), deploy the API and the model, block until Ctrl-C."""
    from services.common.db.migrate import upgrade
    from services.inference import serve_app

    settings = get_settings(InferenceSettings)
    upgrade(settings.resolved_database_url)  # the replicas read the adapter registry as they start
    base_url = serve_app.start(settings)
    typer.echo(f"inference API at {base_url} (base model {settings.resolved_base_model()}); Ctrl-C stops it")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve_app.stop()


@app.command("adapters")
def adapters() -> None:
    """List the registry's adapters and whether this service could serve them (starts no engine)."""
    from services.inference.registry import discover

    settings = get_settings(InferenceSettings).absolute()
    found = discover(
        settings.resolved_database_url,
        settings.adapters_path,
        settings.public_base_name(),
        settings.max_lora_rank,
    )
    for record in found.values():
        row = {
            "name": record.name,
            "version": record.version,
            "path": record.path,
            "source": record.source,
            "servable": record.unservable is None,
            "reason": record.unservable,
        }
        typer.echo(json.dumps(row))
