"""RQ1, the QA corpus (guanaco-llama2-1k): LoRA, QLoRA and full fine-tunes of one base, judged on
a held-out part by answer-token loss and perplexity, and by their answers to fixed questions.

The corpus has no time, so the split is seeded: conversations (lines) are shuffled with
``seed`` and the last ``heldout_fraction`` of them held out, so no turn of a held-out
conversation is trained on. The split goes to the trainer as a file (training conversations
first, held-out ones last, each line with its source line and part) with the validation share
set to exactly the held-out turns: the trainer's validation part *is* the held-out part, its
manifest records the split (``extra.notes.split``) and the data's sha256, and the research
JSON records the seed and source lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import InvalidInput
from services.common.methods import TrainingMethod
from services.common.prompts import bos_id_of, chat_prompt
from services.pipeline.research_jobs import (
    JobSettings,
    MethodRun,
    Plan,
    Progress,
    greedy,
    plan_methods,
    train_and_evaluate,
)

DEFAULT_CORPUS = Path("data/guanaco_llama2_1k/guanaco_llama2_1k.parquet")
# The note asked its fine-tunes the first; the others cover code, facts and advice.
QUESTIONS = (
    "How do I use the OpenAI API?",
    "Write a Python function that reverses a string.",
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
)


@dataclass(frozen=True)
class QaOptions:
    corpus: Path = DEFAULT_CORPUS
    methods: tuple[TrainingMethod, ...] = (TrainingMethod.LORA, TrainingMethod.QLORA, TrainingMethod.FULL)
    max_examples: int | None = None  # conversations, a seeded sample; None: all
    heldout_fraction: float = 0.15
    questions: tuple[str, ...] = QUESTIONS
    max_new_tokens: int = 48
    bootstrap_reps: int = 1000
    confidence: float = 0.95


# --- the seeded split ----------------------------------------------------------------------


def read_conversations(path: Path) -> list[str]:
    """The ``text`` of every line of a parquet or JSON-lines chat corpus, checked as the trainer
    checks it (one line per conversation, Llama-2 format)."""
    from services.trainer.datasets import chat_turns

    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", param="qa_data")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{path}: not a readable parquet file: {exc}", param="qa_data") from exc
        if "text" not in frame.columns:
            raise InvalidInput(f"{path}: no 'text' column (a guanaco-llama2 corpus)", param="qa_data")
        texts = list(frame["text"])
    elif suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                texts.append(json.loads(line).get("text") if line.strip() else None)
            except (json.JSONDecodeError, AttributeError) as exc:
                raise InvalidInput(f"{path}: line {number} is not a JSON object", param="qa_data") from exc
    else:
        raise InvalidInput(f"{path}: a chat corpus is .parquet or .jsonl", param="qa_data")
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise InvalidInput(f"{path}: line {number} has no string 'text'", param="qa_data")
        try:
            chat_turns(text)
        except ValueError as exc:
            raise InvalidInput(f"{path}: line {number}: {exc}", param="qa_data") from exc
    return texts


def seeded_split(
    texts: Sequence[str], fraction: float, seed: int, max_examples: int | None, source: Path
) -> dict[str, list[int]]:
    """Line numbers (1-based) of the training and held-out conversations."""
    order = list(range(1, len(texts) + 1))
    random.Random(seed).shuffle(order)
    if max_examples:
        order = order[:max_examples]
    held = round(len(order) * fraction)
    split = {"train": order[: len(order) - held], "heldout": order[len(order) - held :]}
    for name, lines in split.items():
        if not lines:
            raise InvalidInput(
                f"{source}: the {'held-out' if name == 'heldout' else 'training'} split is empty ({len(order)} conversation(s), held-out "
                f"fraction {fraction})",
                param="max_examples",
            )
    return split


def write_split_corpus(texts: Sequence[str], split: dict[str, list[int]], seed: int, out: Path) -> float:
    """The file the trainer reads; returns the validation share that makes its validation part
    exactly the held-out conversations' turns."""
    from services.trainer.datasets import chat_turns

    out.parent.mkdir(parents=True, exist_ok=True)
    turns = {name: sum(len(chat_turns(texts[n - 1])) for n in lines) for name, lines in split.items()}
    staging = out.with_suffix(".tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for part in ("train", "heldout"):
            for line in split[part]:
                record = {"text": texts[line - 1], "source_line": line, "part": part, "seed": seed}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    staging.replace(out)
    return turns["heldout"] / (turns["train"] + turns["heldout"])


# --- figures -------------------------------------------------------------------------------


def answer_losses(model: Any, examples: Sequence[Any], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """Per example: (summed cross-entropy over its answer tokens, answer tokens), as an array."""
    from services.trainer.loop import answer_losses as per_example

    return np.array(per_example(model, examples, pad_id, batch_size), dtype=float).reshape(-1, 2)


def loss_figures(losses: np.ndarray, reps: int, seed: int, confidence: float) -> dict[str, Any]:
    """Mean loss per answer token, perplexity, and percentile bootstrap intervals over examples
    (each resample draws whole examples; the mean is tokens-weighted, as the training loss is)."""
    nll, tokens = losses[:, 0], losses[:, 1]
    mean = float(nll.sum() / tokens.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(nll), size=(reps, len(nll)))
    means = nll[draws].sum(axis=1) / tokens[draws].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
    return {
        "examples": len(nll),
        "answer_tokens": int(tokens.sum()),
        "mean_loss": mean,
        "loss_interval": [low, high],
        "perplexity": float(np.exp(mean)),
        "perplexity_interval": [float(np.exp(low)), float(np.exp(high))],
        "bootstrap_reps": reps,
        "confidence": confidence,
    }


def _answers(model: Any, tokenizer: Any, questions: Sequence[str], max_new_tokens: int) -> dict[str, str]:
    bos = bos_id_of(tokenizer)
    out = {}
    for question in questions:
        ids = ([bos] if bos is not None else []) + tokenizer.encode(
            chat_prompt(question), add_special_tokens=False
        )
        out[question] = greedy(model, tokenizer, ids, max_new_tokens)
    return out


def _evaluate(model: Any, probe: Any, options: QaOptions, seed: int) -> dict[str, Any]:
    losses = answer_losses(model, probe.validation_set, probe.tokenizer.pad_token_id)
    return {
        "heldout": loss_figures(losses, options.bootstrap_reps, seed, options.confidence),
        "answers": _answers(model, probe.tokenizer, options.questions, options.max_new_tokens),
    }


@dataclass
class QaPlan:
    """Everything checked and the split written: what ``run_qa`` trains and evaluates."""

    options: QaOptions
    jobs: JobSettings
    plan: Plan
    split: dict[str, list[int]]
    corpus: Path


def plan_qa(options: QaOptions, jobs: JobSettings, settings: Any, work: Path) -> QaPlan:
    """The seeded split written for the trainer and every job checked; nothing trains yet."""
    texts = read_conversations(options.corpus)
    split = seeded_split(texts, options.heldout_fraction, jobs.seed, options.max_examples, options.corpus)
    corpus = work / f"qa-split-seed{jobs.seed}-n{len(split['train']) + len(split['heldout'])}.jsonl"
    share = write_split_corpus(texts, split, jobs.seed, corpus)
    data = {"path": str(corpus.resolve()), "validation_fraction": share, "test_fraction": 0.0}
    plan = plan_methods("qa", "chat", options.methods, data, jobs, settings, evaluate_accuracy=False)
    return QaPlan(options, jobs, plan, split, corpus)


def run_qa(planned: QaPlan, settings: Any, say: Progress) -> dict[str, Any]:
    """Fine-tune each method, evaluate base and fine-tunes; the section's JSON."""
    options, jobs, plan, split = planned.options, planned.jobs, planned.plan, planned.split
    say(
        f"research qa: {len(split['train'])} training and {len(split['heldout'])} held-out conversations "
        f"({len(plan.probe.train_set)} / {len(plan.probe.validation_set)} turns), seed {jobs.seed}"
    )
    rows = train_and_evaluate(
        plan,
        settings,
        say,
        "research qa: evaluating",
        lambda model: _evaluate(model, plan.probe, options, jobs.seed),
    )
    rows[1:] = [_with_manifest_split(row, run) for row, run in zip(rows[1:], plan.runs, strict=True)]
    return {
        "question": "qa",
        "corpus": str(options.corpus),
        "split": {
            "method": "seeded shuffle of conversations",
            "seed": jobs.seed,
            "heldout_fraction": options.heldout_fraction,
            "max_examples": options.max_examples,
            "conversations": {name: len(lines) for name, lines in split.items()},
            "turns": {"train": len(plan.probe.train_set), "heldout": len(plan.probe.validation_set)},
            "heldout_source_lines": sorted(split["heldout"]),
            "trainer_file": str(planned.corpus),
        },
        "questions": list(options.questions),
        "max_new_tokens": options.max_new_tokens,
        "models": rows,
    }


def _with_manifest_split(row: dict[str, Any], run: MethodRun) -> dict[str, Any]:
    """A fine-tune's row with the split its manifest records (the trainer's validation part is
    the held-out part: the test reads it back)."""
    if not run.ran:
        return row
    return {**row, "manifest_split": run.published.manifest.extra.get("notes", {}).get("split")}
