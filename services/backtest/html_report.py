"""One self-contained HTML page from a report dict: tables and inline PNG charts, no links out."""

from __future__ import annotations

import html
import math
from typing import Any

from services.backtest import charts

SECTIONS = (
    "notes",
    "cutoff",
    "verdicts",
    "summary",
    "fee-sweep",
    "overfitting",
    "information-coefficient",
    "data",
    "leakage",
    "classification",
    "per-class",
    "bias",
    "calibration",
    "strategy",
    "equity",
    "confusion",
    "reliability",
    "share-over-time",
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td{white-space:nowrap}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:0.6em}.flag{color:#b00020;font-weight:bold}
.good{color:#1b5e20;font-weight:bold}h3{margin-bottom:0.2em}
img{max-width:100%}.prose td{white-space:normal}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _interval(pair: list[float] | None) -> str:
    return "–" if not pair else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _img(png: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def _scored(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The predictors that have figures (an unavailable baseline has none)."""
    return [p for p in report["predictors"] if p.get("metrics")]


def _p(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _yes_no(value: bool | None, flag_yes: bool = True) -> str:
    if value is None:
        return "–"
    if value:
        return '<span class="flag">yes</span>' if flag_yes else '<span class="good">yes</span>'
    return "no"


def _verdicts(report: dict[str, Any]) -> str:
    v = report["verdicts"]
    level = f"{100 * v['level']:.0f}%"
    intro = (
        f"<p>Every verdict comes from a block bootstrap over label windows ({v['reps']} resamples, seed "
        f"{v['seed']}): rows sharing a window are resampled together, so the effective sample is the "
        f"number of label windows ({v['windows']} for {v['rows']} rows). Intervals are {level} percentile "
        "intervals; p-values that take rows as independent stand beside them for reference and decide "
        "nothing.</p>"
    )
    notes = "".join(f'<p class="warn">{html.escape(note)}</p>' for note in v["notes"])
    rows = []
    for c in v["comparisons"]:
        if c.get("difference") is None:
            rows.append([_fmt(c["model"]), _fmt(c["baseline"]), "–", "–", "–", _fmt(c["windows"]), "–", "–",
                         f"unavailable: {html.escape(c['unavailable'] or '')}"])  # fmt: skip
            continue
        rows.append(
            [
                _fmt(c["model"]),
                _fmt(c["baseline"]),
                _pct(c["model_accuracy"]),
                _pct(c["baseline_accuracy"]),
                f"{100 * c['difference']:+.1f} pts",
                _fmt(c["windows"]),
                "–"
                if c["interval"] is None
                else f"[{100 * c['interval'][0]:+.1f}, {100 * c['interval'][1]:+.1f}]",
                _p(c["p_value_rows_independent"]),
                _yes_no(c["better"], flag_yes=False)
                if c["interval"] is not None
                else html.escape(c.get("unavailable") or "–"),
            ]
        )
    comparisons = (
        "<h3>Model against each baseline: paired accuracy on the same rows</h3>"
        + _table(
            [
                "model",
                "baseline",
                "model acc.",
                "baseline acc.",
                "difference",
                "label windows",
                f"{level} interval (windows)",
                "McNemar p (rows independent)",
                "better",
            ],
            rows,
        )
        if rows
        else "<p>No model among the predictors: only the bias verdicts apply.</p>"
    )
    bias_rows = []
    for b in v["bias"]:
        if b.get("gap") is None:
            bias_rows.append([_fmt(b["predictor"]), "–", "–", "–", "–", "–", f"unavailable: {html.escape(b['unavailable'] or '')}"])  # fmt: skip
            continue
        interval = b["interval"]
        verdict = (
            f'<span class="flag">yes, towards {html.escape(b["direction"])}</span>'
            if b["biased"]
            else ("no" if b["biased"] is not None else html.escape(b.get("unavailable") or "–"))
        )
        bias_rows.append(
            [
                _fmt(b["predictor"]),
                f"{100 * b['gap']:+.1f} pts",
                _fmt(b["windows"]),
                "–" if interval is None else f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]",
                _p(b["p_value_windows"]),
                _p(b["p_value_rows_independent"]),
                verdict,
            ]
        )
    bias = "<h3>Bias: share predicted Increase minus share actually Increase</h3>" + _table(
        ["predictor", "gap", "label windows", f"{level} interval (windows)", "p (windows)",
         "binomial p (rows independent)", "biased"],
        bias_rows,
    )  # fmt: skip
    return intro + notes + comparisons + bias


def _fee_sweep(report: dict[str, Any]) -> str:
    scored = _scored(report)
    if not scored:
        return "<p>No predictor was scored.</p>"
    shown = [
        i for i, row in enumerate(scored[0]["metrics"]["fee_sweep"]["sweep"]) if row["fees_bps"] % 10 == 0
    ]
    fees = [scored[0]["metrics"]["fee_sweep"]["sweep"][i]["fees_bps"] for i in shown]
    rows = []
    for p in scored:
        sweep = p["metrics"]["fee_sweep"]
        even = sweep["break_even_bps"]
        rows.append(
            [_fmt(p["name"])]
            + [_pct(sweep["sweep"][i]["cumulative_return"]) for i in shown]
            + [_fmt(even["compounded"], 1), _fmt(even["mean"], 1)]
        )
    intro = (
        "<p>Cumulative return after fees at each fee (bps of the notional traded), the strategy as below. "
        "Break-even: the fee at which the cumulative return reaches 0 (compounded), and at which the mean "
        "return per window, so the Sharpe, reaches 0; 0 when it loses before fees. The JSON report has every "
        "5 bps, with the Sharpe at each.</p>"
    )
    header = [
        "predictor",
        *[f"{fee:g} bps" for fee in fees],
        "break-even (compounded)",
        "break-even (Sharpe 0)",
    ]
    return intro + _table(header, rows)


def _overfitting(report: dict[str, Any]) -> str:
    o = report["overfitting"]
    d = o["deflated_sharpe"]
    intro = (
        f"<p>Per-window Sharpe (mean / std of the net return per label window, not annualised) of each "
        f"predictor's strategy. The Deflated Sharpe Ratio (Bailey &amp; López de Prado 2014) is the "
        f"probability that the true Sharpe exceeds what the best of {d['trials']} unskilled trials would show "
        f"(expected maximum {_fmt(d['expected_max_sharpe'], 4)}, from the variance "
        f"{_fmt(d['sharpe_variance'], 6)} of the trials' Sharpes), adjusted for skewness and kurtosis; "
        "PSR is the same against 0. 0.95 or more is the usual bar.</p>"
    )
    rows = [
        [
            _fmt(r["predictor"]) + (" (best)" if r["predictor"] == d["best"] else ""),
            _fmt(r["observations"]),
            _fmt(r["sharpe_per_period"], 4),
            _fmt(r["skewness"], 2),
            _fmt(r["kurtosis"], 2),
            _fmt(r["psr"]),
            _fmt(r["dsr"]),
        ]
        for r in d["predictors"]
    ]
    table = _table(["predictor", "windows", "Sharpe / window", "skewness", "kurtosis", "PSR", "DSR"], rows)
    pbo = o["pbo"]
    if pbo.get("pbo") is None:
        pbo_text = f"<p>PBO: {html.escape(pbo.get('unavailable') or 'unavailable')}.</p>"
    else:
        picked = ", ".join(f"{html.escape(k)} {n}" for k, n in pbo["selected_in_sample"].items())
        pbo_text = (
            f"<p><b>Probability of backtest overfitting: {_pct(pbo['pbo'])}</b> (combinatorially symmetric "
            f"cross-validation, Bailey, Borwein, López de Prado &amp; Zhu 2015: {pbo['periods']} windows in "
            f"{pbo['blocks']} time blocks, all {pbo['combinations']} halves as in-sample; the share of them "
            f"where the in-sample best predictor by {html.escape(pbo['metric'])} ranks at or below the median "
            f"out of sample). Median logit {_fmt(pbo['logit_median'], 2)}; the in-sample best lost out of "
            f"sample in {_pct(pbo['probability_oos_loss'])} of them; chosen in-sample: {picked}.</p>"
        )
    return intro + table + pbo_text


def _information_coefficient(report: dict[str, Any]) -> str:
    rows = []
    for p in _scored(report):
        ic = p["metrics"].get("information_coefficient")
        if ic is None:
            continue
        if ic.get("unavailable"):
            rows.append([_fmt(p["name"]), "–", "–", "–", "–", "–", html.escape(ic["unavailable"])])
            continue
        rows.append(
            [_fmt(p["name"]), _fmt(ic["ic"]), _interval(ic["ic_interval"]), _fmt(ic["rank_ic"]),
             _interval(ic["rank_ic_interval"]), _fmt(ic["windows"]), html.escape(ic.get("interval_unavailable") or "")]
        )  # fmt: skip
    if not rows:
        return "<p>No predictor gave p(Increase).</p>"
    intro = (
        "<p>Correlation of p(Increase) with the realised return of each row's label window: Pearson (IC) "
        "and Spearman (rank IC), with window-aware intervals: the variance of the correlation from each "
        "row's influence on it, summed within label windows (rows sharing a window count as one "
        "observation), on Fisher's z.</p>"
    )
    return intro + _table(
        ["predictor", "IC", "interval (windows)", "rank IC", "interval (windows)", "label windows", "note"],
        rows,
    )


def _notes(report: dict[str, Any]) -> str:
    items = "".join(f"<li>{html.escape(note)}</li>" for note in report["notes"])
    return f'<div class="warn"><ul>{items}</ul></div>' if items else "<p>No notes.</p>"


def _difference(c: dict[str, Any] | None) -> str:
    if c is None:
        return "–"
    if c.get("difference") is None or c.get("interval") is None:
        return html.escape(c.get("unavailable") or "–")
    low, high = c["interval"]
    better = _yes_no(c["better"], flag_yes=False)
    return f"{100 * c['difference']:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] better: {better}"


def _cutoff(report: dict[str, Any]) -> str:
    """Who could have seen which rows, then the verdicts on post-cutoff rows with the pre-cutoff
    figures beside them, marked contaminated (the JSON's ``cutoff`` section, the same numbers)."""
    cutoff = report.get("cutoff")
    if not cutoff:
        return "<p>No cutoff section (a report from before knowledge cutoffs were recorded).</p>"
    intro = (
        "<p>Each model's knowledge cutoff (services/common/cutoffs.py; its lines head this report). A row "
        "is post-cutoff when its headline time is at or after the latest cutoff of the models scored: no "
        "model here could have read what followed it. Verdicts are judged on those rows only.</p>"
    )
    models = [
        [
            _fmt(m["predictor"]),
            _fmt(m["status"]),
            _fmt(m["cutoff"].get("pretraining_stated")),
            _fmt(m["cutoff"].get("tuning_stated")),
            _fmt(m["latest"]),
            _pct(m["share_possibly_seen_in_pretraining"]),
            _pct(m["share_possibly_seen"]),
            _fmt(m["cutoff"].get("source")),
        ]
        for m in cutoff["models"]
    ]
    table = _table(
        ["model", "cutoff", "pretraining", "tuning", "latest (exclusive, UTC)", "rows seen in pretraining",
         "rows before latest", "source"],
        models,
    ) if models else ""  # fmt: skip
    table = f'<div class="prose">{table}</div>' if table else ""  # the source column is a sentence
    post, pre, unknown = cutoff.get("post"), cutoff.get("pre"), set(cutoff.get("unknown", []))
    pre_pairs = {(c["model"], c["baseline"]): c for c in (pre["verdicts"]["comparisons"] if pre else [])}
    post_bias = {b["predictor"]: b for b in (post["verdicts"]["bias"] if post else [])}
    accuracy = [
        [
            _fmt(p["name"]) + (' <span class="flag">cutoff unknown: possibly seen</span>' if p["name"] in unknown else ""),
            _pct((post or {}).get("accuracy", {}).get(p["name"])),
            _yes_no(post_bias.get(p["name"], {}).get("biased")),
            f'<span class="flag">{_pct(pre["accuracy"].get(p["name"]))} contaminated</span>' if pre else "–",
        ]
        for p in report["predictors"]
    ]  # fmt: skip
    pairs = [
        [_fmt(c["model"]) + (' <span class="flag">cutoff unknown</span>' if c["model"] in unknown else ""),
         _fmt(c["baseline"]), _difference(c),
         f'<span class="flag">{_difference(pre_pairs.get((c["model"], c["baseline"])))} (contaminated)</span>' if pre else "–"]
        for c in (post["verdicts"]["comparisons"] if post else pre_pairs.values())
    ]  # fmt: skip
    if not post:
        pairs = [[row[0], row[1], "no post-cutoff rows: no verdict", row[3]] for row in pairs]
    post_head = (
        f"post-cutoff ({post['rows']} rows, {post['windows']} windows)" if post else "post-cutoff (no rows)"
    )
    if unknown:
        post_head += f"; NOT clean for {', '.join(sorted(unknown))} (cutoff unknown)"
    pre_head = f"pre-cutoff ({pre['rows']} rows): CONTAMINATED" if pre else "pre-cutoff (no rows)"
    return (
        f"{intro}{table}"
        "<h3>Verdicts on post-cutoff rows, pre-cutoff figures beside (contaminated: not judged)</h3>"
        + _table(["predictor", f"accuracy, {post_head}", "biased (post-cutoff, windows)", f"accuracy, {pre_head}"], accuracy)
        + (_table(["model", "baseline", f"difference, {post_head}", f"difference, {pre_head}"], pairs) if pairs else "")
    )  # fmt: skip


def _data(report: dict[str, Any]) -> str:
    data = report["data"]
    rows = [[html.escape(key.replace("_", " ")), _fmt(value)] for key, value in data.items()]
    return _table(["", "value"], rows)


def _leakage(report: dict[str, Any]) -> str:
    if not report["leakage"]:
        return "<p>Every adapter's training window (plus embargo) ends before the first scored row.</p>"
    items = "".join(f"<li>{html.escape(item)}</li>" for item in report["leakage"])
    return f'<div class="warn"><b>Overlap allowed: these figures are in-sample.</b><ul>{items}</ul></div>'


def _summary(report: dict[str, Any]) -> str:
    header = [
        "predictor",
        "rows",
        "label windows",
        "accuracy",
        "balanced acc.",
        "MCC",
        "predicted Increase",
        "biased (windows)",
        "Brier",
        "cum. return",
        "Sharpe",
        "break-even fee (bps)",
    ]
    rows = []
    for s in report["summary"]:
        if s.get("unavailable"):
            rows.append(
                [_fmt(s["predictor"]), f"<i>unavailable: {html.escape(s['unavailable'])}</i>"] + ["–"] * 10
            )
            continue
        rows.append(
            [
                _fmt(s["predictor"]),
                _fmt(s["rows"]),
                _fmt(s.get("windows")),
                _fmt(s["accuracy"]),
                _fmt(s["balanced_accuracy"]),
                _fmt(s["mcc"]),
                _pct(s["share_predicted_increase"]),
                _yes_no(s["biased"]) if s["predictor"] != "buy_and_hold" else "–",
                _fmt(s["brier"]),
                _pct(s["cumulative_return"]),
                _fmt(s["sharpe"], 2),
                _fmt(s.get("break_even_fee_bps"), 1),
            ]
        )
    return _table(header, rows)


def _classification(report: dict[str, Any]) -> str:
    header = [
        "predictor",
        "accuracy",
        "Wilson 95% (rows)",
        "block bootstrap (windows)",
        "balanced acc.",
        "bootstrap",
        "MCC",
        "bootstrap",
        "macro F1",
    ]
    rows = []
    for p in _scored(report):
        c, b = p["metrics"]["classification"], p["metrics"]["bootstrap"]
        rows.append([
            _fmt(p["name"]), _fmt(c["accuracy"]), _interval(c["accuracy_wilson"]), _interval(b.get("accuracy")),
            _fmt(c["balanced_accuracy"]), _interval(b.get("balanced_accuracy")), _fmt(c["mcc"]),
            _interval(b.get("mcc")), _fmt(c["macro_f1"]),
        ])  # fmt: skip
    return _table(header, rows)


def _per_class(report: dict[str, Any]) -> str:
    rows = []
    for p in _scored(report):
        for label, figures in p["metrics"]["classification"]["per_class"].items():
            rows.append([_fmt(p["name"]), _fmt(label), _fmt(figures["precision"]), _fmt(figures["recall"]), _fmt(figures["f1"]), _fmt(figures["support"])])  # fmt: skip
    return _table(["predictor", "label", "precision", "recall", "F1", "support"], rows)


def _bias(report: dict[str, Any]) -> str:
    rows = []
    for p in _scored(report):
        b = p["metrics"]["bias"]
        if b["biased"] is None:
            flag = html.escape(b.get("unavailable") or "–")
        else:
            flag = f'<span class="flag">towards {b["direction"]}</span>' if b["biased"] else "no"
        rows.append(
            [
                _fmt(p["name"]),
                _pct(b["share_predicted_increase"]),
                _pct(b["share_actual_increase"]),
                _fmt(b["windows"]),
                _interval(b.get("gap_interval_windows")),
                _p(b.get("p_value_windows")),
                flag,
                _p(b["p_value_rows_independent"]),
                _yes_no(b["biased_if_rows_independent"], flag_yes=False),
            ]
        )
    intro = (
        "<p>The verdict: the block-bootstrap interval of the gap (share predicted minus share actual, "
        "resampling label windows) excludes 0. Beside it, for reference only, the two-sided binomial test of "
        "the count predicted Increase against the share that was Increase, which takes rows as independent "
        "and so is far too confident when headlines share label windows.</p>"
    )
    header = ["predictor", "predicted Increase", "actually Increase", "label windows", "gap interval (windows)",
              "p (windows)", "biased", "binomial p (rows independent)", "would flag if rows were independent"]  # fmt: skip
    return intro + _table(header, rows)


def _calibration(report: dict[str, Any]) -> str:
    rows = []
    for p in _scored(report):
        c = p["metrics"]["calibration"]
        if c is None:
            rows.append([_fmt(p["name"]), "no probability", "–", "–"])
        else:
            rows.append(
                [
                    _fmt(p["name"]),
                    _fmt(c["brier"]),
                    _fmt(c["log_loss"]),
                    _fmt(c["expected_calibration_error"]),
                ]
            )
    return _table(["predictor", "Brier", "log loss", "ECE"], rows)


def _strategy(report: dict[str, Any]) -> str:
    rows = []
    for p in _scored(report):
        s = p["metrics"]["strategy"]
        rows.append([_fmt(p["name"]), _pct(s["cumulative_return"]), _fmt(s["sharpe"], 2), _pct(s["max_drawdown"]), _pct(s["hit_rate"]), _fmt(s["turnover_per_window"]), _fmt(s["windows_traded"])])  # fmt: skip
    bh = report["buy_and_hold"]
    rows.append(
        [
            "<b>buy and hold</b>",
            _pct(bh["cumulative_return"]),
            _fmt(bh["sharpe"], 2),
            _pct(bh["max_drawdown"]),
            "–",
            "–",
            "–",
        ]
    )
    cfg = report["config"]
    intro = (
        f"<p>Long on Increase, {html.escape(str(cfg['decrease_position']))} on Decrease, one position per label "
        f"window (the mean of its rows' signals), fees {_fmt(cfg['fees_bps'], 1)} bps of notional traded. "
        "Sharpe annualised for the horizon, flat periods counted as zero returns.</p>"
    )
    return intro + _table(
        [
            "predictor",
            "cum. return",
            "Sharpe",
            "max drawdown",
            "hit rate",
            "turnover / window",
            "windows traded",
        ],
        rows,
    )


def _charts(report: dict[str, Any]) -> dict[str, str]:
    curves = {p["name"]: p["metrics"]["strategy"]["equity"] for p in _scored(report)}
    curves["buy_and_hold"] = report["buy_and_hold"]["equity"]
    calibrations = {
        p["name"]: p["metrics"]["calibration"] for p in _scored(report) if p["metrics"]["calibration"]
    }
    return {
        "equity": _img(charts.equity_chart(curves), "equity curves"),
        "confusion": _img(
            charts.confusion_chart(
                {p["name"]: p["metrics"]["classification"]["confusion"] for p in _scored(report)}
            ),
            "confusion matrices",
        ),
        "reliability": _img(charts.reliability_chart(calibrations), "reliability diagram")
        if calibrations
        else "<p>No predictor gave probabilities.</p>",
        "share-over-time": _img(
            charts.share_over_time_chart(report["share_over_time"]), "share predicted Increase"
        ),
    }


def render_html(report: dict[str, Any]) -> str:
    images = _charts(report)
    parts = [
        _section("notes", "Read this first", _notes(report)),
        _section("cutoff", "Knowledge cutoffs: rows the models could have read about", _cutoff(report)),
        _section("verdicts", "Verdicts (window-aware), every row scored", _verdicts(report)),
        _section("summary", "Summary", _summary(report)),
        _section("fee-sweep", "Fees: return at each fee and the break-even fee", _fee_sweep(report)),
        _section("overfitting", "Overfitting across predictors: DSR and PBO", _overfitting(report)),
        _section(
            "information-coefficient",
            "Information coefficient of p(Increase)",
            _information_coefficient(report),
        ),
        _section("data", "Rows scored", _data(report)),
        _section("leakage", "Leakage guard", _leakage(report)),
        _section("classification", "Accuracy with intervals", _classification(report)),
        _section("per-class", "Precision, recall and F1 per label", _per_class(report)),
        _section("bias", "Bias: share predicted Increase", _bias(report)),
        _section("calibration", "Calibration of p(Increase)", _calibration(report)),
        _section("strategy", "Trading the signal", _strategy(report)),
        _section("equity", "Equity curves", images["equity"]),
        _section("confusion", "Confusion matrices", images["confusion"]),
        _section("reliability", "Reliability diagram", images["reliability"]),
        _section("share-over-time", "Share predicted Increase over time", images["share-over-time"]),
    ]
    title = html.escape(report["title"])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>Generated {html.escape(report['generated_at'])}; run {_fmt(report.get('run_id'))}.</p>"
        + "".join(parts)
        + "</body></html>"
    )
