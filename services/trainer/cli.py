"""`hsig trainer ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="The trainer service.", no_args_is_help=True)
