"""``hsig reproduce qa|hate|btc|all``: the research note's questions, one command each
(``services.pipeline.research``). Registered as a top-level group by ``services.pipeline.cli``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from services.common.errors import InvalidInput


class _QuestionGroup(TyperGroup):
    """A question that does not exist is bad input: one line and exit 2, like every other."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            raise InvalidInput(
                f"no question {args[0]!r} to reproduce: choose qa, hate, btc or all", param="question"
            )
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_QuestionGroup,
    help="The research note's questions: qa (RQ1), hate (RQ2), btc (RQ3) or all; one HTML report.",
    no_args_is_help=True,
)


def _command(question: str) -> Callable[..., None]:
    def command(
        model: Annotated[
            str, typer.Option(help="tiny (built here), a Llama-2 directory or a Hugging Face id (GPU host).")
        ] = "tiny",
        methods: Annotated[
            str, typer.Option(help="Comma-separated: lora, qlora (CUDA + bitsandbytes), full.")
        ] = "lora,qlora,full",
        max_examples: Annotated[
            int | None,
            typer.Option(help="qa: conversations, hate: posts, a seeded sample (default: the whole corpus)."),
        ] = None,
        eval_examples: Annotated[int, typer.Option(help="hate: held-out posts scored.")] = 400,
        epochs: Annotated[float, typer.Option(help="Fine-tuning epochs.")] = 1.0,
        max_steps: Annotated[int | None, typer.Option(help="Stop each fine-tune after N steps.")] = None,
        batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 8,
        max_length: Annotated[int, typer.Option(help="Longest example in tokens.")] = 512,
        max_new_tokens: Annotated[int, typer.Option(help="qa: greedy answer length.")] = 48,
        bootstrap_reps: Annotated[int, typer.Option(help="qa: resamples for the loss intervals.")] = 1000,
        seed: Annotated[int, typer.Option(help="Split, sample, data order and LoRA init.")] = 0,
        qa_data: Annotated[Path, typer.Option(help="qa: the chat corpus (.parquet or .jsonl).")] = Path(
            "data/guanaco_llama2_1k/guanaco_llama2_1k.parquet"
        ),
        hate_data: Annotated[
            Path, typer.Option(help="hate: the Davidson CSV or an implicit-hate TSV.")
        ] = Path("data/hate_speech_davidson/labeled_data.csv"),
        out: Annotated[
            Path | None, typer.Option(help="Where the JSON and report.html go (default <data_dir>/research).")
        ] = None,
        inference_url: Annotated[
            str | None, typer.Option(help="btc: score through this inference service.")
        ] = None,
    ) -> None:
        from services.pipeline.research import ResearchOptions, run_research

        options = ResearchOptions(
            model=model,
            methods=tuple(part for part in methods.split(",") if part.strip()),
            max_examples=max_examples,
            eval_examples=eval_examples,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            bootstrap_reps=bootstrap_reps,
            seed=seed,
            qa_data=qa_data,
            hate_data=hate_data,
            out=out,
            inference_url=inference_url,
        )
        result = run_research(question, options, progress=lambda line: typer.echo(line, err=True))
        for name in result.sections:
            typer.echo(f"{name}: {result.out / f'{name}.json'}")
        typer.echo(f"HTML: {result.html_path}")

    command.__doc__ = {
        "qa": "RQ1: LoRA, QLoRA and full fine-tunes on guanaco-llama2-1k: held-out loss, answers, cost.",
        "hate": "RQ2: LoRA, QLoRA and full fine-tunes on hate speech: accuracy, F1, confusion, baselines.",
        "btc": "RQ3: the Bitcoin-trend reproduction (hsig backtest reproduce), as a report section.",
        "all": "RQ1, RQ2 and RQ3 in turn, every input checked first; one HTML report.",
    }[question]
    return command


for _question in ("qa", "hate", "btc", "all"):
    app.command(_question)(_command(_question))
