"""A model directory scored in this process with transformers (and peft for adapters).

The same scoring function as the trainer's evaluation and the same prompts as serving
(``services.common.scoring.score_with_transformers``): whole-label log-probabilities
normalised over Increase/Decrease. Useful for full fine-tunes, for adapters before they are
deployed, and for reproducing the research note without a server.

It needs torch, transformers (and peft for an adapter): the GPU image has them, the slim image
(ingest, backtest) does not. Their absence is bad input, said in one line when the predictor is
built, which the API's preflight and the run both do before any row is scored.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.backtest.predictors.base import PredictionSet, prompts_of
from services.backtest.rows import EvalRows
from services.common.adapters import (
    MANIFEST_FILE,
    has_manifest,
    is_adapter_dir,
    is_full_model_dir,
    read_manifest,
    unsafe_weights,
)
from services.common.errors import InvalidInput, OperationalError
from services.common.prompts import TREND_LABELS, bos_id_of
from services.common.schemas import AdapterManifest

log = logging.getLogger(__name__)

SCORING_PACKAGES = ("torch", "transformers", "peft")


def _missing(packages: tuple[str, ...]) -> list[str]:
    # find_spec looks without importing: torch and transformers take seconds to import, and this
    # runs in the API's preflight. A name blocked in sys.modules (None) counts as missing, as
    # Python's own import would treat it.
    missing = []
    for package in packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a broken parent package, or a module without a spec
            found = False
        if not found:
            missing.append(package)
    return missing


def require_scoring_packages(packages: tuple[str, ...] = SCORING_PACKAGES) -> None:
    """InvalidInput naming what is missing, and what to use instead, if in-process scoring cannot run."""
    missing = _missing(packages)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InvalidInput(
            f"the local predictor scores in-process and needs {_words(list(packages))} (the GPU "
            f"image's packages); {_words(missing)} {verb} not installed here: use kind 'service' to "
            "score through the inference service",
            param="kind",
        )


def _words(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


@dataclass
class LocalPredictor:
    name: str
    model: str
    adapter_dir: str | None = None
    batch_size: int = 16
    kind: str = "local"

    def __post_init__(self) -> None:
        # Checked here, not at the import inside _load: the factory builds every predictor before
        # the API queues a run (preflight) and before the first predictor scores, so a host without
        # the packages hears it at once instead of from a run that fails part-way with a traceback.
        require_scoring_packages(self._packages())

    def _packages(self) -> tuple[str, ...]:
        adapter = Path(self.adapter_dir) if self.adapter_dir else None
        if adapter is None or is_full_model_dir(adapter):
            return ("torch", "transformers")  # the base or a full fine-tune: no peft involved
        return SCORING_PACKAGES

    def manifest(self) -> AdapterManifest | None:
        if self.adapter_dir is None:
            return None
        directory = Path(self.adapter_dir)
        if not has_manifest(directory):
            raise InvalidInput(
                f"{self.adapter_dir} has no {MANIFEST_FILE}: without its training window the leakage "
                "guard cannot check it (pass --allow-overlap to score it anyway)",
                param="adapter_dir",
            )
        return read_manifest(directory)

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        adapter = Path(self.adapter_dir) if self.adapter_dir else None
        if adapter is not None and not adapter.is_dir():
            raise InvalidInput(f"adapter directory {adapter} does not exist", param="adapter_dir")
        full_model = adapter is not None and is_full_model_dir(adapter)
        weights = str(adapter) if full_model else self.model
        tokenizer_dir = str(adapter) if full_model and (adapter / "tokenizer.json").is_file() else self.model
        if adapter is not None and (reason := unsafe_weights(adapter)):
            raise InvalidInput(reason, param="adapter_dir")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            # safetensors only: a pickled checkpoint runs code as it loads.
            model = AutoModelForCausalLM.from_pretrained(weights, dtype="float32", use_safetensors=True)
        except OSError as exc:
            raise OperationalError(f"cannot load model {weights!r}: {exc}") from exc
        if adapter is not None and not full_model:
            if not is_adapter_dir(adapter):
                raise InvalidInput(
                    f"{adapter} holds neither a PEFT adapter nor a full model", param="adapter_dir"
                )
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))  # safetensors: checked above
        return model, tokenizer

    def predict(self, rows: EvalRows) -> PredictionSet:
        from services.common.scoring import score_with_transformers

        model, tokenizer = self._load()
        prompts = prompts_of(rows)
        probabilities: list[dict[str, float]] = []
        chunk = max(self.batch_size * 8, 64)
        for start in range(0, len(prompts), chunk):  # chunks only so progress can be shown
            probabilities += score_with_transformers(
                model,
                tokenizer,
                prompts[start : start + chunk],
                TREND_LABELS,
                bos_id=bos_id_of(tokenizer),
                batch_size=self.batch_size,
            )
            log.info("%s: %d/%d rows scored", self.name, len(probabilities), len(prompts))
        p_increase = np.array([p[TREND_LABELS[0]] for p in probabilities], dtype=float)
        # Ties go to Increase, as services.common.scoring.best_label does.
        y_pred = (p_increase >= 0.5).astype(np.int8)
        meta = {"model": self.model, "adapter_dir": self.adapter_dir}
        return PredictionSet(self.name, self.kind, y_pred, p_increase, meta=meta)
