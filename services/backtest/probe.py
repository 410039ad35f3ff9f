"""The memorisation probe: does the base model know Bitcoin's move from the date alone?

For a sample of label windows (before the model's knowledge cutoff when one is known:
``--before``, else ``services.common.cutoffs.cutoff_for``; the tiny model's is none, so every
window may be drawn), the untuned base model is asked for the direction over the window with no
headline and no market situation (``services.common.prompts.btc_trend_probe_prompt``) and
scored as every predictor is:
whole-label log-probabilities of Increase and Decrease, normalised (``score_with_transformers``).
Its accuracy against the realised label says how much it remembers: a model well above chance
here has seen those days, and its headline-conditioned accuracy on them means little.

One question per label window, so the windows are the sample: the interval is the backtest's
block bootstrap over label windows (``verdicts.resample_totals``), the distance above chance is
accuracy - 0.5 with that interval, and the distance above the majority rate (the share of the
commoner label among the sampled windows: what always answering it would score) is the paired
difference against that constant (``verdicts.compare_to_baselines``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from services.backtest.ablation import ReportFiles, finite, results_page, stem_now, write_pair
from services.backtest.predictors.local import require_scoring_packages
from services.backtest.rows import EvalRows, load_rows
from services.backtest.settings import BacktestSettings
from services.backtest.verdicts import (
    Sample,
    Scored,
    bootstrap_p_value,
    compare_to_baselines,
    percentile_interval,
    resample_totals,
)
from services.common.cutoffs import KnowledgeCutoff, cutoff_for
from services.common.errors import InvalidInput, OperationalError
from services.common.prompts import TREND_LABELS, bos_id_of, btc_trend_probe_prompt


@dataclass(frozen=True)
class ProbeOptions:
    model: str
    start: datetime | None = None
    end: datetime | None = None
    before: datetime | None = None  # the model's cutoff: only windows entered before it
    sample: int = 200
    seed: int = 0
    bootstrap_reps: int | None = None
    alpha: float = 0.05
    symbol: str | None = None
    horizon: str | None = None
    exchange: str | None = None


@dataclass(frozen=True)
class ProbeWindows:
    """One question per label window: when it was entered and what Bitcoin then did."""

    entry_time: np.ndarray  # epoch seconds
    y_true: np.ndarray  # 1 = Increase

    @property
    def moments(self) -> list[datetime]:
        return [datetime.fromtimestamp(int(t), UTC) for t in self.entry_time]


def sample_windows(rows: EvalRows, before: datetime | None, size: int, seed: int) -> ProbeWindows:
    """Up to ``size`` distinct label windows entered before ``before``, drawn without replacement."""
    if size < 1:
        raise InvalidInput("sample must be at least 1", param="sample")
    windows = rows.windows()
    first = np.unique(windows.row_window, return_index=True)[1]  # a window's rows share its label
    entry, label = rows.entry_time[first], rows.y_true[first]
    if before is not None:
        keep = entry < before.timestamp()
        if not keep.any():
            raise InvalidInput(
                f"no label window before the cutoff {before.isoformat()}: the rows start at "
                f"{rows.first_time.isoformat()}",
                param="before",
            )
        entry, label = entry[keep], label[keep]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(entry.size, size=min(size, entry.size), replace=False))
    return ProbeWindows(entry[chosen], label[chosen])


def score_probe(model_dir: str, moments: list[datetime], batch_size: int = 16) -> np.ndarray:
    """p(Increase) of each headline-free probe prompt, by the predictors' label scoring."""
    require_scoring_packages(("torch", "transformers"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.scoring import score_with_transformers

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # safetensors only: a pickled checkpoint runs code as it loads.
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", use_safetensors=True)
    except OSError as exc:
        raise OperationalError(f"cannot load model {model_dir!r}: {exc}") from exc
    prompts = [btc_trend_probe_prompt(moment) for moment in moments]
    scored = score_with_transformers(
        model, tokenizer, prompts, TREND_LABELS, bos_id=bos_id_of(tokenizer), batch_size=batch_size
    )
    return np.array([p[TREND_LABELS[0]] for p in scored], dtype=float)


def probe_figures(
    y_true: np.ndarray, p_increase: np.ndarray, reps: int, seed: int, alpha: float
) -> dict[str, Any]:
    """Accuracy with its window interval, the distance above chance and above the majority rate."""
    y_pred = (p_increase >= 0.5).astype(np.int8)  # ties to Increase, as best_label does
    right = (y_pred == y_true).astype(float)
    sample = Sample.of(np.arange(y_true.size))
    share_increase = float(y_true.mean())
    majority = np.full(y_true.size, int(share_increase >= 0.5), dtype=np.int8)
    versus_majority = compare_to_baselines(
        y_true, [Scored("probe", "model", y_pred), Scored("majority", "baseline", majority)],
        sample, reps, seed, alpha,
    )[0]  # fmt: skip
    accuracy = float(right.mean())
    out: dict[str, Any] = {
        "questions": int(y_true.size),
        "accuracy": accuracy,
        "accuracy_interval": None,
        "above_chance": accuracy - 0.5,
        "above_chance_interval": None,
        "p_value_chance_windows": None,
        "share_increase": share_increase,
        "share_predicted_increase": float(y_pred.mean()),
        "majority_rate": max(share_increase, 1 - share_increase),
        "above_majority": versus_majority["difference"],
        "above_majority_interval": versus_majority["interval"],
        "p_value_majority_windows": versus_majority["p_value_windows"],
        "windows": sample.windows,
        "level": 1 - alpha,
        "reps": versus_majority["reps"],
        "unavailable": sample.unavailable(reps),
    }
    if out["unavailable"] is None:
        columns = np.stack([np.ones(y_true.size), right], axis=1)
        totals = resample_totals(sample, sample.per_window(columns), reps, seed).sum(axis=1)
        replicates = totals[:, 1] / totals[:, 0]
        low, high = percentile_interval(replicates, 1 - alpha)
        out["accuracy_interval"] = [low, high]
        out["above_chance_interval"] = [low - 0.5, high - 0.5]
        out["p_value_chance_windows"] = bootstrap_p_value(replicates, null=0.5)
    out["remembers"] = None if out["accuracy_interval"] is None else bool(out["accuracy_interval"][0] > 0.5)
    return out


def build_probe(settings: BacktestSettings, options: ProbeOptions) -> dict[str, Any]:
    rows = load_rows(
        settings.resolved_database_url,
        options.symbol or settings.symbol,
        options.horizon or settings.horizons[0],
        options.start,
        options.end,
        options.exchange,
    )
    known = cutoff_for(options.model, settings.model_cutoffs)
    # A cutoff given on the command line wins; else the model's latest known one; none or unknown:
    # every window is asked about (the tiny model read nothing, an unknown one may have read all).
    before = options.before or known.latest
    windows = sample_windows(rows, before, options.sample, options.seed)
    moments = windows.moments
    p_increase = score_probe(options.model, moments)
    reps = settings.bootstrap_reps if options.bootstrap_reps is None else options.bootstrap_reps
    figures = probe_figures(windows.y_true, p_increase, reps, options.seed, options.alpha)
    return {
        "kind": "memorisation probe",
        "created_at": datetime.now(UTC).isoformat(),
        "model": options.model,
        "cutoff": before.isoformat() if before else None,
        "knowledge_cutoff": {"status": known.status, "described": known.describe(), "source": known.source},
        "method": (
            "the untuned model asked for the direction over each sampled label window with no headline and "
            "no market situation (prompts.btc_trend_probe_prompt), scored by whole-label log-probabilities; "
            "interval: block bootstrap over label windows (one question per window)"
        ),
        "data": {
            "symbol": rows.symbol,
            "horizon": rows.horizon,
            "exchange": rows.exchange,
            "windows_available": int(rows.windows().count),
            "first_question": moments[0].isoformat(),
            "last_question": moments[-1].isoformat(),
        },
        "notes": [_cutoff_note(options.before, known)],
        "results": [{"predictor": options.model, **figures}],
        "questions": [
            {"time": moment.isoformat(), "actual": int(actual), "p_increase": float(p)}
            for moment, actual, p in zip(moments, windows.y_true, p_increase, strict=True)
        ],
    }


def _cutoff_note(given: datetime | None, known: KnowledgeCutoff) -> str:
    if given is not None:
        return f"windows before {given.isoformat()} (--before); the model's own cutoff: {known.describe()}"
    if known.latest is not None:
        return f"windows before the model's latest cutoff {known.latest.isoformat()} ({known.describe()})"
    return f"knowledge cutoff {known.describe()}: every window may be asked about"


def probe_html(report: dict[str, Any]) -> str:
    data = report["data"]
    intro = (
        f"{report['results'][0]['questions']} questions from {data['first_question']} to "
        f"{data['last_question']}, cutoff {report['cutoff'] or 'none given'}. {report['method']}."
    )
    columns = [
        ("model", "predictor"), ("questions", "questions"), ("accuracy", "accuracy"),
        ("interval", "accuracy_interval"), ("above chance", "above_chance"),
        ("majority rate", "majority_rate"), ("above majority", "above_majority"),
        ("interval", "above_majority_interval"), ("share predicted Increase", "share_predicted_increase"),
        ("label windows", "windows"), ("remembers", "remembers"),
    ]  # fmt: skip
    return results_page(report, "Memorisation probe", columns, intro)


def run_probe(settings: BacktestSettings, options: ProbeOptions) -> ReportFiles:
    report = finite(build_probe(settings, options))
    return write_pair(report, settings.reports_path, stem_now("probe"), probe_html(report))
