"""`hsig db ...` and `hsig model ...`: commands that belong to no single service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.common.settings import get_settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Local base models.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database at HSIG_DATABASE_URL / DATABASE_URL to the newest schema."""
    from services.common.db.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    typer.echo(f"database at {url.split('@')[-1]} is at the newest schema")


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path | None, typer.Option(help="Directory; default <data_dir>/models/tiny-llama.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a finished build is there.")] = False,
) -> None:
    """Build the tiny Llama-architecture model and tokenizer used by demos and tests."""
    from services.common.tiny_model import build_tiny_model

    path = build_tiny_model(out or get_settings().models_path / "tiny-llama", force=force)
    typer.echo(str(path))
