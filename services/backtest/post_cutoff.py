"""Post-cutoff verdicts: rows a scored model could have read about, and rows it could not.

Each predictor has a knowledge cutoff (services/common/cutoffs.py): a model's is its base's
(the adapter manifest records it; else the base model is looked up; the inference service's
base comes from its ``/v1/models``; an OpenAI-compatible endpoint's model from
HSIG_MODEL_CUTOFFS), a baseline has none (it is computed from the rows alone). A row is
post-cutoff when its headline time is at or after the **latest** cutoff of the models scored
(for a model: the later of its pretraining and tuning cutoffs): on those rows no model scored
could have read what happened next. A model whose cutoff is unknown has no such row: every row
is "possibly seen" for it, and the report says so instead of calling it clean.

The headline time is the earliest time a row's text existed (a coarse time is the start of
its period), so a row straddling a cutoff counts as before it: the cautious side. That is why
this split, unlike the trainer's windows and the leakage guard (which place a row at its
known_at, the latest it can have appeared), reads headline_time: a model may have read a
day-dated headline published on the cutoff's day before the cutoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np

from services.backtest.predictors.base import Predictor
from services.backtest.rows import EvalRows
from services.backtest.schemas import BaselineSpec, LocalSpec, OpenAISpec, PredictorSpec, ServiceSpec
from services.backtest.settings import BacktestSettings
from services.common.cutoffs import NO_MODEL, UNKNOWN, KnowledgeCutoff, cutoff_for
from services.common.errors import HsigError, InvalidInput
from services.common.redact import redact_url
from services.common.schemas import BASE_MODEL_NAME, AdapterManifest

log = logging.getLogger(__name__)

MODELS_TIMEOUT_SECONDS = 5.0


class NoPostCutoffRows(InvalidInput):
    """``post_cutoff_only`` and no row is after the latest cutoff (or a cutoff is unknown). HTTP 422."""

    status_code = 422


@dataclass(frozen=True)
class ModelCutoff:
    predictor: str
    kind: str
    cutoff: KnowledgeCutoff

    @property
    def is_model(self) -> bool:
        return self.kind != "baseline"


def _recorded(
    manifest: AdapterManifest | None, base_model: str, settings: BacktestSettings
) -> KnowledgeCutoff:
    if manifest is not None and manifest.base_model_cutoff is not None:
        return manifest.base_model_cutoff
    return cutoff_for(manifest.base_model if manifest else base_model, settings.model_cutoffs)


def served_base_cutoff(base_url: str, token: str = "") -> KnowledgeCutoff:
    """The inference service's base model cutoff, from its /v1/models; unknown if it cannot say."""
    url = f"{base_url.rstrip('/')}/v1/models"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, timeout=MODELS_TIMEOUT_SECONDS, headers=headers)
        response.raise_for_status()
        cards = response.json()["data"]
        card = next(card for card in cards if card.get("kind") == "base")
        if card.get("knowledge_cutoff"):
            return KnowledgeCutoff.model_validate(card["knowledge_cutoff"])
        reason = f"{redact_url(url)} gives no knowledge_cutoff for its base"
    except (httpx.HTTPError, ValueError, KeyError, StopIteration) as exc:
        reason = f"{redact_url(url)} did not say ({type(exc).__name__})"
    log.warning("base model cutoff unknown: %s", reason)
    return UNKNOWN.model_copy(update={"source": reason})


def predictor_cutoff(
    spec: PredictorSpec, predictor: Predictor, settings: BacktestSettings
) -> KnowledgeCutoff:
    if isinstance(spec, BaselineSpec):
        return NO_MODEL
    if isinstance(spec, OpenAISpec):
        return cutoff_for(spec.model, settings.model_cutoffs)
    if isinstance(spec, ServiceSpec) and spec.adapter == BASE_MODEL_NAME:
        return served_base_cutoff(predictor.base_url, getattr(predictor, "api_token", ""))  # type: ignore[attr-defined]
    try:
        manifest = predictor.manifest()
    except HsigError:  # no manifest (an --allow-overlap local adapter): its base decides
        manifest = None
    base = spec.model if isinstance(spec, LocalSpec) else ""
    return _recorded(manifest, base, settings)


def predictor_cutoffs(
    specs: list[PredictorSpec], predictors: list[Predictor], settings: BacktestSettings
) -> list[ModelCutoff]:
    return [
        ModelCutoff(predictor.name, predictor.kind, predictor_cutoff(spec, predictor, settings))
        for spec, predictor in zip(specs, predictors, strict=True)
    ]


@dataclass(frozen=True)
class CutoffSplit:
    models: list[ModelCutoff]
    latest: datetime | None  # the latest known cutoff over the models scored
    latest_model: str | None
    unknown: list[str]  # models whose cutoff nobody states
    post: np.ndarray  # per row: after the latest cutoff

    @property
    def rows_post(self) -> int:
        return int(self.post.sum())

    @property
    def rows_pre(self) -> int:
        return int(self.post.size - self.post.sum())


def split_rows(rows: EvalRows, models: list[ModelCutoff]) -> CutoffSplit:
    known = [(m.cutoff.latest, m.predictor) for m in models if m.cutoff.latest is not None]
    latest, latest_model = max(known) if known else (None, None)
    unknown = [m.predictor for m in models if m.is_model and m.cutoff.status == "unknown"]
    post = np.ones(len(rows), dtype=bool) if latest is None else rows.headline_time >= latest.timestamp()
    return CutoffSplit(models, latest, latest_model, unknown, post)


def take(rows: EvalRows, mask: np.ndarray) -> EvalRows:
    """The rows where ``mask`` holds, in order (label windows are recomputed from them)."""
    index = np.flatnonzero(mask)
    pick = lambda values: [values[i] for i in index]  # noqa: E731
    return EvalRows(
        row_id=rows.row_id[index], headline=pick(rows.headline), published_at=pick(rows.published_at),
        market_situation=pick(rows.market_situation), headline_time=rows.headline_time[index],
        entry_time=rows.entry_time[index], exit_time=rows.exit_time[index],
        known_at=rows.known_times()[index],
        entry_price=rows.entry_price[index], exit_price=rows.exit_price[index], y_true=rows.y_true[index],
        exchange=rows.exchange, symbol=rows.symbol, timeframe=rows.timeframe, horizon=rows.horizon,
        flat_rows_left_out=rows.flat_rows_left_out, time_precision=pick(rows.precisions()),
    )  # fmt: skip


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def require_post_rows(rows: EvalRows, split: CutoffSplit) -> None:
    """For post_cutoff_only: NoPostCutoffRows in one line unless some row is provably unseen."""
    last = _iso(float(rows.headline_time.max()))
    if split.unknown:
        raise NoPostCutoffRows(
            f"no post-cutoff rows: the knowledge cutoff of {', '.join(split.unknown)} is unknown, so no row "
            f"is provably after it (state it in HSIG_MODEL_CUTOFFS); last row {last}",
            param="post_cutoff_only",
        )
    if split.rows_post == 0:
        raise NoPostCutoffRows(
            f"no post-cutoff rows: latest cutoff {split.latest.isoformat() if split.latest else '-'} "
            f"({split.latest_model}), last row {last}",
            param="post_cutoff_only",
        )


def _model_row(model: ModelCutoff, rows: EvalRows) -> dict[str, Any]:
    cutoff, count = model.cutoff, len(rows)
    if cutoff.status == "unknown":
        seen_pre = seen_any = count
    elif cutoff.status == "none":
        seen_pre = seen_any = 0
    else:
        pre = cutoff.pretraining.timestamp() if cutoff.pretraining else float("inf")
        seen_pre = int(np.sum(rows.headline_time < pre))
        seen_any = int(np.sum(rows.headline_time < cutoff.latest.timestamp()))  # type: ignore[union-attr]
    return {
        "predictor": model.predictor,
        "kind": model.kind,
        "status": cutoff.status,
        "cutoff": cutoff.model_dump(mode="json"),
        "latest": cutoff.latest.isoformat() if cutoff.latest else None,
        "rows_possibly_seen_in_pretraining": seen_pre,
        "share_possibly_seen_in_pretraining": seen_pre / count if count else None,
        "rows_possibly_seen": seen_any,
        "share_possibly_seen": seen_any / count if count else None,
    }


def _line(model: dict[str, Any]) -> str:
    name, cutoff = model["predictor"], model["cutoff"]
    if model["status"] == "unknown":
        return f"{name}: knowledge cutoff UNKNOWN: all {model['rows_possibly_seen']} rows possibly seen, none clean"
    if model["status"] == "none":
        return f"{name}: no knowledge cutoff (none: {cutoff['source']}): no row could have been seen"
    return (
        f"{name}: could have seen {100 * model['share_possibly_seen_in_pretraining']:.1f}% of rows in pretraining "
        f"(cutoff {cutoff['pretraining_stated']}), {100 * model['share_possibly_seen']:.1f}% before its latest "
        f"cutoff {model['latest']}"
    )


def cutoff_section(rows: EvalRows, split: CutoffSplit, post_cutoff_only: bool) -> dict[str, Any]:
    """The report's ``cutoff`` section without its verdicts (the runner adds ``post`` and ``pre``)."""
    models = [_model_row(m, rows) for m in split.models if m.is_model]
    lines = [_line(m) for m in models]
    if not models:
        lines.append("no language model scored: baselines read nothing, every row is clean")
    first = _iso(float(rows.headline_time.min()))
    if split.latest is not None:
        lines.append(
            f"latest cutoff {split.latest.isoformat()} ({split.latest_model}): {split.rows_post} of {len(rows)} "
            f"rows after it (verdicts), {split.rows_pre} before it (CONTAMINATED: shown beside, not judged)"
        )
    clean = not split.unknown and split.rows_pre == 0
    if clean and models:
        lines.append(f"post-cutoff: every row (the first at {first}) is after every scored model's cutoff")
    if split.unknown:
        lines.append(
            f"cutoff unknown for {', '.join(split.unknown)}: its figures are never clean, post-cutoff rows included"
        )
    return {
        "post_cutoff_only": post_cutoff_only,
        "latest": split.latest.isoformat() if split.latest else None,
        "latest_model": split.latest_model,
        "unknown": split.unknown,
        "rows": len(rows),
        "rows_post": split.rows_post,
        "rows_pre": split.rows_pre,
        "first_row": first,
        "last_row": _iso(float(rows.headline_time.max())),
        "all_rows_post_cutoff": clean,
        "models": models,
        "lines": lines,
    }


def window_statement(models: list[ModelCutoff], start: datetime) -> str:
    """For the scheduled rolling run: is a window from ``start`` post-cutoff by construction? Checked."""
    chosen = [m for m in models if m.is_model]
    unknown = [m.predictor for m in chosen if m.cutoff.status == "unknown"]
    if unknown:
        return f"NOT post-cutoff by construction: the knowledge cutoff of {', '.join(unknown)} is unknown"
    late = [m for m in chosen if m.cutoff.latest is not None and m.cutoff.latest > start]
    if late:
        who = ", ".join(f"{m.predictor} ({m.cutoff.latest.isoformat()})" for m in late)  # type: ignore[union-attr]
        return f"NOT post-cutoff by construction: the window starts {start.isoformat()}, before the cutoff of {who}"
    known = [m.cutoff.latest for m in chosen if m.cutoff.latest is not None]
    latest = f"the latest, {max(known).isoformat()}" if known else "none of them has one"
    return (
        f"post-cutoff by construction: the window starts {start.isoformat()}, after every scored model's "
        f"knowledge cutoff ({latest}; checked, not assumed)"
    )
