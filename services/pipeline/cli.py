"""The one command-line entry point: ``hsig <group> <command>`` (``python -m services.pipeline.cli``).

The composition root: every service's commands, plus those that span services
(``services.pipeline.commands``), added to the groups a user finds them in.

Errors this project raises on purpose end the command with one line on stderr and an exit
code: 2 for bad input (InvalidInput, NotFound, Conflict), 1 for everything else.
"""

from __future__ import annotations

import sys

import typer

from services.backtest.cli import app as backtest_app
from services.common.cli import db_app, model_app
from services.common.errors import Conflict, HsigError, InvalidInput, NotFound
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.inference.cli import app as inference_app
from services.ingest.cli import app as ingest_app
from services.pipeline.commands import attach
from services.pipeline.research_cli import app as reproduce_app
from services.pipeline.walk_forward_worker import app as pipeline_app
from services.trainer.cli import app as trainer_app

app = typer.Typer(
    help="headline-signal: news headlines, read by fine-tuned LLM adapters, as a Bitcoin trend signal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
attach(ingest_app=ingest_app, backtest_app=backtest_app)
app.add_typer(ingest_app, name="ingest")
app.add_typer(trainer_app, name="train")
app.add_typer(inference_app, name="inference")
app.add_typer(backtest_app, name="backtest")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(reproduce_app, name="reproduce")


def main() -> None:
    configure_logging(get_settings().log_level)
    try:
        app()
    except (InvalidInput, NotFound, Conflict) as exc:
        print(f"hsig: error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except HsigError as exc:
        print(f"hsig: error: {exc.message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
