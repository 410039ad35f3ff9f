"""The research note's three questions, each one call, and one report for them all.

- ``qa``: RQ1, instruction following on guanaco-llama2-1k (``research_qa``);
- ``hate``: RQ2, hate-speech detection on the Davidson corpus (``research_hate``);
- ``btc``: RQ3, the Bitcoin trend, which is ``hsig backtest reproduce`` unchanged
  (``services.pipeline.reproduce``);
- ``all``: the three.

Every input of every question is checked before anything trains (a bad corpus, layout, split,
label or method is one InvalidInput). Each question writes ``<out>/<question>.json``; the
report ``<out>/report.html`` is rebuilt from every section present, so questions run apart
end up side by side. With the tiny local model the figures say nothing about Llama-2, and the
report says so first.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.errors import InvalidInput
from services.common.methods import TrainingMethod
from services.pipeline.research_hate import DEFAULT_CORPUS as HATE_CORPUS
from services.pipeline.research_hate import HateOptions, plan_hate, run_hate
from services.pipeline.research_jobs import JobSettings, Progress, is_tiny, parse_methods
from services.pipeline.research_qa import DEFAULT_CORPUS as QA_CORPUS
from services.pipeline.research_qa import QaOptions, plan_qa, run_qa
from services.pipeline.research_report import SECTION_ORDER, write_report

log = logging.getLogger(__name__)
QUESTIONS = ("qa", "hate", "btc", "all")


@dataclass(frozen=True)
class ResearchOptions:
    model: str = "tiny"
    methods: tuple[str, ...] = ("lora", "qlora", "full")
    max_examples: int | None = None  # qa: conversations, hate: posts (seeded samples); None: all
    eval_examples: int = 400  # hate: held-out posts scored
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0
    max_new_tokens: int = 48
    bootstrap_reps: int = 1000
    explain_examples: int = 3
    qa_data: Path = QA_CORPUS
    hate_data: Path = HATE_CORPUS
    out: Path | None = None  # default: <data_dir>/research
    data_dir: Path = Path("data")  # btc: the bundled data
    inference_url: str | None = None  # btc: score through this inference service


@dataclass
class ResearchResult:
    out: Path
    html_path: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


def questions_of(which: str) -> tuple[str, ...]:
    if which not in QUESTIONS:
        raise InvalidInput(
            f"question {which!r} does not exist: choose {', '.join(QUESTIONS)}", param="question"
        )
    return ("qa", "hate", "btc") if which == "all" else (which,)


def _trainer_settings() -> Any:
    from services.common.db.migrate import upgrade
    from services.common.settings import get_settings
    from services.trainer.settings import TrainerSettings

    # Evaluated in this process: no inference service to tell about each fine-tune.
    settings = get_settings(TrainerSettings).model_copy(update={"inference_url": ""})
    upgrade(settings.resolved_database_url)
    return settings


def out_dir(options: ResearchOptions) -> Path:
    if options.out is not None:
        return options.out
    from services.common.settings import get_settings

    return Path(get_settings().data_dir) / "research"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write aside and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    os.replace(staging, path)


def _stamp(section: dict[str, Any], options: ResearchOptions, started: datetime) -> dict[str, Any]:
    return {
        **section,
        "model": options.model,
        "tiny": is_tiny(options.model),
        "started_at": started.isoformat(),
        "written_at": datetime.now(UTC).isoformat(),
    }


def run_research(which: str, options: ResearchOptions, progress: Progress | None = None) -> ResearchResult:
    """Check every input of the chosen questions, then run them in turn and write the report."""
    say = progress or (lambda message: log.info("%s", message))
    chosen = questions_of(which)
    methods = parse_methods(options.methods)
    _check_sizes(options)
    out = out_dir(options)
    jobs = JobSettings(
        model=options.model,
        epochs=options.epochs,
        max_steps=options.max_steps,
        batch_size=options.batch_size,
        max_length=options.max_length,
        seed=options.seed,
    )
    plans = _plan(chosen, options, methods, jobs, out) if set(chosen) - {"btc"} else {}
    result = ResearchResult(out=out, html_path=out / "report.html")
    for question in chosen:
        started = datetime.now(UTC)
        if question == "btc":
            section = btc_section(_reproduce_btc(options, say))
        elif question == "qa":
            section = run_qa(plans["qa"], plans["settings"], say)
        else:
            section = run_hate(plans["hate"], plans["settings"], say)
        result.sections[question] = _stamp(section, options, started)
        write_json(out / f"{question}.json", result.sections[question])
        write_report(out)  # after each question, so a later failure keeps what was done
    return result


def _check_sizes(options: ResearchOptions) -> None:
    for name in ("max_examples", "max_steps"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise InvalidInput(f"{name} must be at least 1, not {value}", param=name)
    for name in ("eval_examples", "batch_size", "bootstrap_reps", "max_new_tokens"):
        if getattr(options, name) < 1:
            raise InvalidInput(f"{name} must be at least 1, not {getattr(options, name)}", param=name)


def _plan(
    chosen: tuple[str, ...],
    options: ResearchOptions,
    methods: tuple[TrainingMethod, ...],
    jobs: JobSettings,
    out: Path,
) -> dict[str, Any]:
    """Both corpora checked by the trainer before either question trains."""
    settings = _trainer_settings()
    plans: dict[str, Any] = {"settings": settings}
    if "qa" in chosen:
        qa = QaOptions(
            corpus=options.qa_data,
            methods=methods,
            max_examples=options.max_examples,
            max_new_tokens=options.max_new_tokens,
            bootstrap_reps=options.bootstrap_reps,
        )
        plans["qa"] = plan_qa(qa, jobs, settings, out / "work")
    if "hate" in chosen:
        hate = HateOptions(
            corpus=options.hate_data,
            methods=methods,
            max_examples=options.max_examples,
            eval_examples=options.eval_examples,
            explain_examples=options.explain_examples,
        )
        plans["hate"] = plan_hate(hate, jobs, settings)
    return plans


# --- RQ3: the existing reproduction --------------------------------------------------------


def _reproduce_btc(options: ResearchOptions, say: Progress) -> Any:
    from services.backtest.settings import BacktestSettings
    from services.common.settings import get_settings
    from services.pipeline.reproduce import ReproduceOptions, reproduce

    settings = get_settings(BacktestSettings)
    if options.inference_url:
        settings = settings.model_copy(update={"inference_url": options.inference_url})
    reproduce_options = replace(
        ReproduceOptions(),
        model=options.model,
        epochs=options.epochs,
        max_steps=options.max_steps,
        data_dir=options.data_dir,
        seed=options.seed,
        inference_url=options.inference_url,
    )
    return reproduce(settings, reproduce_options, progress=say)


def btc_section(result: Any) -> dict[str, Any]:
    """The section of a reproduction's backtest (services.backtest.runner.BacktestResult)."""
    keep = ("predictor", "rows", "accuracy", "balanced_accuracy", "mcc", "share_predicted_increase", "biased")
    summary = [{key: row.get(key) for key in (*keep, "unavailable")} for row in result.summary]
    return {
        "question": "btc",
        "run_id": result.run_id,
        "report_html": str(Path(result.html_path).resolve()),
        "report_json": str(Path(result.json_path).resolve()),
        "notes": list(result.report.get("notes", [])),
        "summary": summary,
    }


def record_btc(result: Any, out: Path, model: str = "tiny") -> Path:
    """Add a reproduction run elsewhere (``make demo``'s, through the inference service) as the
    report's btc section."""
    now = datetime.now(UTC)
    write_json(out / "btc.json", _stamp(btc_section(result), ResearchOptions(model=model), now))
    return write_report(out)


__all__ = ["QUESTIONS", "SECTION_ORDER", "ResearchOptions", "ResearchResult", "record_btc", "run_research"]
