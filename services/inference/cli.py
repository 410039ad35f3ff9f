"""`hsig inference ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="The inference service.", no_args_is_help=True)
