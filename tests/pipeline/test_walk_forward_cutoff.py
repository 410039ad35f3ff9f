"""The pooled walk-forward verdicts split at the latest knowledge cutoff (issue 15, item 2):
computed on the rows after it, the rows before it counted as contaminated."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from services.backtest.verdicts import Sample, Scored, verdict_table
from services.pipeline.walk_forward import PooledRows, pooled_cutoff

CUTOFF = datetime(2020, 1, 1, tzinfo=UTC)


def _pooled(seed: int = 3) -> PooledRows:
    rng = np.random.default_rng(seed)
    # Two folds of 200 rows, hourly, the cutoff inside the second fold.
    times = [
        datetime(2019, 12, 20, tzinfo=UTC).timestamp() + 3600 * np.arange(200),
        CUTOFF.timestamp() - 3600 * 50 + 3600 * np.arange(200),
    ]
    windows = [np.arange(200) // 4, np.arange(200) // 4]  # four rows share each label window
    truth = rng.integers(0, 2, 400).astype(np.int8)
    model = np.where(rng.random(400) < 0.7, truth, 1 - truth).astype(np.int8)
    baseline = np.ones(400, dtype=np.int8)
    scored = [Scored("adapter-v1", "model", model), Scored("always_increase", "baseline", baseline)]
    return PooledRows(truth, scored, windows, times)


def _report(latest: datetime | None, unknown: list[str] | None = None) -> dict:
    return {"cutoff": {"latest": latest.isoformat() if latest else None, "unknown": unknown or []}}


def test_pooled_verdicts_are_computed_on_the_rows_after_the_latest_cutoff_only() -> None:
    pooled = _pooled()
    # The folds may state different cutoffs (a method's base in one fold only): the latest rules.
    reports = [_report(datetime(2019, 6, 1, tzinfo=UTC)), _report(CUTOFF)]
    out = pooled_cutoff(reports, pooled, reps=200, seed=1, alpha=0.05)

    post = np.concatenate([times >= CUTOFF.timestamp() for times in pooled.headline_times])
    assert (out["rows_post"], out["rows_pre"]) == (150, 250)
    assert out["latest"] == CUTOFF.isoformat()
    expected = verdict_table(
        pooled.truth[post],
        [Scored(s.name, s.kind, s.y_pred[post]) for s in pooled.scored],
        Sample.from_folds(
            [w[t >= CUTOFF.timestamp()] for w, t in zip(pooled.windows, pooled.headline_times, strict=True)]
        ),
        200,
        1,
        0.05,
    )
    assert out["verdicts_post"] == expected
    assert out["verdicts_post"]["comparisons"][0]["windows"] == 150 // 4 + 1  # 37 whole windows and a part
    assert "CONTAMINATED" in out["lines"][0]


def test_every_row_after_the_cutoff_and_none_after_it() -> None:
    pooled = _pooled()
    clean = pooled_cutoff([_report(None), _report(None)], pooled, reps=50, seed=1, alpha=0.05)
    assert clean["rows_pre"] == 0 and clean["verdicts_post"].startswith("same as")
    late = datetime(2030, 1, 1, tzinfo=UTC)
    dirty = pooled_cutoff([_report(late), _report(late)], pooled, reps=50, seed=1, alpha=0.05)
    assert dirty["rows_post"] == 0 and dirty["verdicts_post"] == {
        "unavailable": "no pooled row after the latest cutoff"
    }


def test_an_unknown_cutoff_is_never_reported_clean() -> None:
    out = pooled_cutoff(
        [_report(None, ["openai:gpt"]), _report(None)], _pooled(), reps=50, seed=1, alpha=0.05
    )
    assert out["unknown"] == ["openai:gpt"]
    assert any("unknown for openai:gpt" in line for line in out["lines"])
    assert out["verdicts_post"] == {"unavailable": "cutoff unknown for openai:gpt"}
