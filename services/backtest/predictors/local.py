"""A model directory scored in this process with transformers (and peft for adapters).

The same scoring function as the trainer's evaluation and the same prompts as serving
(``services.common.scoring.score_with_transformers``): whole-label log-probabilities
normalised over Increase/Decrease. Useful for full fine-tunes, for adapters before they are
deployed, and for reproducing the research note without a server.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.backtest.predictors.base import PredictionSet, prompts_of
from services.backtest.rows import EvalRows
from services.common.errors import InvalidInput, OperationalError
from services.common.prompts import TREND_LABELS, bos_id_of
from services.common.schemas import AdapterManifest

log = logging.getLogger(__name__)


@dataclass
class LocalPredictor:
    name: str
    model: str
    adapter_dir: str | None = None
    batch_size: int = 16
    kind: str = "local"

    def manifest(self) -> AdapterManifest | None:
        if self.adapter_dir is None:
            return None
        path = Path(self.adapter_dir) / "manifest.json"
        if not path.is_file():
            raise InvalidInput(
                f"{self.adapter_dir} has no manifest.json: without its training window the leakage "
                "guard cannot check it (pass --allow-overlap to score it anyway)",
                param="adapter_dir",
            )
        return AdapterManifest.model_validate(json.loads(path.read_text()))

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        adapter = Path(self.adapter_dir) if self.adapter_dir else None
        if adapter is not None and not adapter.is_dir():
            raise InvalidInput(f"adapter directory {adapter} does not exist", param="adapter_dir")
        full_model = adapter is not None and (adapter / "config.json").is_file()
        weights = str(adapter) if full_model else self.model
        tokenizer_dir = str(adapter) if full_model and (adapter / "tokenizer.json").is_file() else self.model
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            model = AutoModelForCausalLM.from_pretrained(weights, dtype="float32")
        except OSError as exc:
            raise OperationalError(f"cannot load model {weights!r}: {exc}") from exc
        if adapter is not None and not full_model:
            if not (adapter / "adapter_config.json").is_file():
                raise InvalidInput(
                    f"{adapter} holds neither a PEFT adapter nor a full model", param="adapter_dir"
                )
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
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
