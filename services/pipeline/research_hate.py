"""RQ2, hate-speech detection: LoRA, QLoRA and full fine-tunes answering the note's "Yes, No or
Unsure" question, against the untuned base and a majority baseline, on the trainer's held-out
split of the Davidson corpus (stratified, seeded; or an implicit-hate TSV, in file order).

Labels are scored, not parsed: the log-probability of each label's tokens after the prompt,
normalised over the labels (``services.common.scoring``: what the inference service's scorer
and the btc-trend backtest do). The explanation is generated after the scored label, as the
inference service's ``explain`` does, for a few examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.backtest.scores import wilson_interval
from services.common.methods import TrainingMethod
from services.common.prompts import HATE_LABELS, bos_id_of, encode_prompt_answer
from services.common.scoring import best_label, score_with_transformers
from services.pipeline.research_jobs import (
    JobSettings,
    Plan,
    Progress,
    greedy,
    plan_methods,
    train_and_evaluate,
)

DEFAULT_CORPUS = Path("data/hate_speech_davidson/labeled_data.csv")
LABELS: tuple[str, ...] = HATE_LABELS  # Yes, No, Unsure: rows and columns of the confusion matrix


@dataclass(frozen=True)
class HateOptions:
    corpus: Path = DEFAULT_CORPUS
    methods: tuple[TrainingMethod, ...] = (TrainingMethod.LORA, TrainingMethod.QLORA, TrainingMethod.FULL)
    max_examples: int | None = None  # a seeded sample of the corpus (the trainer's data.max_examples)
    validation_fraction: float = 0.15
    eval_examples: int = 400  # the first N of the held-out split (a fair sample: it is shuffled)
    explain_examples: int = 3
    explain_tokens: int = 32
    confidence: float = 0.95


# --- metrics -------------------------------------------------------------------------------


def classification(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str] = LABELS, confidence: float = 0.95
) -> dict[str, Any]:
    """Accuracy with its Wilson interval, per-label precision/recall/F1 (0 where undefined, as
    scikit-learn), macro-F1 over ``labels``, and the confusion matrix (rows true, columns
    predicted, in ``labels`` order)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for true, guess in zip(truth, predicted, strict=True):
        matrix[index[true], index[guess]] += 1
    rows, correct = int(matrix.sum()), int(np.trace(matrix))
    per_class = {}
    for i, label in enumerate(labels):
        hit, said, support = float(matrix[i, i]), float(matrix[:, i].sum()), float(matrix[i, :].sum())
        precision = hit / said if said else 0.0
        recall = hit / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return {
        "rows": rows,
        "correct": correct,
        "accuracy": correct / rows if rows else float("nan"),
        "accuracy_wilson": list(wilson_interval(correct, rows, confidence)),
        "per_class": per_class,
        "macro_f1": float(np.mean([item["f1"] for item in per_class.values()])),
        "confusion": {"labels": list(labels), "matrix": matrix.tolist()},
        "predicted_share": {
            label: float(matrix[:, i].sum()) / rows if rows else 0.0 for i, label in enumerate(labels)
        },
    }


def post_of(prompt: str) -> str:
    """The post a hate prompt asks about (between "### Text:" and the answer marker)."""
    return prompt.split("### Text:", 1)[-1].rsplit("### Answer:", 1)[0].strip()


# --- scoring -------------------------------------------------------------------------------


def _score(model: Any, tokenizer: Any, examples: Sequence[Any]) -> list[dict[str, float]]:
    return score_with_transformers(
        model, tokenizer, [e.prompt for e in examples], LABELS, bos_id=bos_id_of(tokenizer), batch_size=16
    )


def _explanations(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    scored: Sequence[dict[str, float]],
    options: HateOptions,
) -> list[dict[str, Any]]:
    """The greedy continuation of prompt + scored label: the model arguing for its answer."""
    bos = bos_id_of(tokenizer)
    out = []
    for example, probabilities in list(zip(examples, scored, strict=True))[: options.explain_examples]:
        label = best_label(probabilities)
        ids = encode_prompt_answer(tokenizer, example.prompt, label, bos_id=bos).input_ids
        out.append(
            {
                "text": post_of(example.prompt),
                "truth": example.answer,
                "label": label,
                "probabilities": probabilities,
                "explanation": greedy(model, tokenizer, ids, options.explain_tokens),
            }
        )
    return out


def _figures(model: Any, tokenizer: Any, examples: Sequence[Any], options: HateOptions) -> dict[str, Any]:
    scored = _score(model, tokenizer, examples)
    predicted = [best_label(p) for p in scored]
    truth = [e.answer for e in examples]
    return {
        **classification(truth, predicted, confidence=options.confidence),
        "explanations": _explanations(model, tokenizer, examples, scored, options),
    }


def _majority_row(train: Sequence[Any], examples: Sequence[Any], options: HateOptions) -> dict[str, Any]:
    """The training split's most common answer, given for every held-out post."""
    majority = Counter(e.answer for e in train).most_common(1)[0][0]
    truth = [e.answer for e in examples]
    return {
        "model": f"majority baseline (always {majority})",
        "method": "baseline",
        "status": "ok",
        **classification(truth, [majority] * len(truth), confidence=options.confidence),
        "explanations": [],
    }


@dataclass
class HatePlan:
    """Every job checked and the split loaded: what ``run_hate`` trains and scores."""

    options: HateOptions
    plan: Plan


def plan_hate(options: HateOptions, jobs: JobSettings, settings: Any) -> HatePlan:
    """Every job checked by the trainer (layout, labels, split), nothing trained yet."""
    data = {
        "path": str(options.corpus),
        "max_examples": options.max_examples,
        "validation_fraction": options.validation_fraction,
        "test_fraction": 0.0,
    }
    plan = plan_methods(
        "hate",
        "implicit-hate",
        options.methods,
        data,
        jobs,
        settings,
        max_eval_examples=options.eval_examples,
    )
    return HatePlan(options, plan)


def run_hate(planned: HatePlan, settings: Any, say: Progress) -> dict[str, Any]:
    """Fine-tune each method, score base, baseline and fine-tunes; the section's JSON."""
    options, plan = planned.options, planned.plan
    dataset = plan.probe.dataset
    examples = dataset.validation[: options.eval_examples]
    say(
        f"research hate: {len(dataset.train)} training and {len(dataset.validation)} held-out posts "
        f"({dataset.notes.get('layout')}); scoring {len(examples)}"
    )
    tokenizer = plan.probe.tokenizer
    rows = train_and_evaluate(
        plan,
        settings,
        say,
        "research hate: scoring",
        lambda model: _figures(model, tokenizer, examples, options),
    )
    rows.insert(1, _majority_row(dataset.train, examples, options))  # after the base, before the fine-tunes
    return {
        "question": "hate",
        "corpus": str(options.corpus),
        "layout": dataset.notes.get("layout"),
        "label_map": dataset.notes.get("label_map"),
        "split": dataset.notes.get("split"),
        "scored_examples": len(examples),
        "labels": list(LABELS),
        "models": rows,
    }
