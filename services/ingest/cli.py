"""`hsig ingest ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="The ingest service.", no_args_is_help=True)
