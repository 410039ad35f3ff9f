"""One self-contained HTML page for the research note's three questions, from their JSON files.

Each section puts the note's own finding (quoted from the project's record of it: issue 13,
../shared/docs/DESIGN.md) beside our figures. Sections come from ``<out>/<question>.json``,
whichever exist, so questions run at different times share one page.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.pipeline.reproduce import TINY_DISCLAIMER

SECTION_ORDER = ("qa", "hate", "btc")
TITLES = {
    "qa": "RQ1: instruction following (guanaco-llama2-1k)",
    "hate": "RQ2: hate-speech detection (Davidson et al. 2017)",
    "btc": "RQ3: Bitcoin trend after a CNBC headline",
}
# What the note found, in the words the project keeps of it.
NOTE = {
    "overall": 'LoRA matches full fine-tuning in "2 out of 3" tasks, judged on "3 to 5 hand-checked '
    'examples" (the note, as issue 13 and DESIGN.md record it).',
    "qa": '"LoRA trained in 5 min vs 16 min (7B) and 7 vs 59 min (13B) per epoch with about a quarter '
    'of the GPU memory"; the answers were read by hand, among them the answer to "How do I use the '
    'OpenAI API?" (DESIGN.md, issue 13).',
    "hate": 'The note asked "Yes, No or Unsure, then explain" (DESIGN.md) and judged a handful of '
    "answers by hand. Davidson et al. found that separating hate speech from merely offensive "
    "language is the hard part: most misclassified hate is called offensive (ANCHORS.md).",
    "btc": "\"untuned models and ChatGPT predicted 'Increase' for every headline (an inherent bias), "
    'and the LoRA-tuned 13B model did not" (DESIGN.md).',
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:0.6em}
blockquote{border-left:4px solid #8aa;margin:0.5em 0;padding:0.3em 1em;background:#f5f8f8}
.answer{max-width:28em;font-size:90%;white-space:pre-wrap;overflow-wrap:anywhere}.muted{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _interval(pair: list[float] | None, digits: int = 3) -> str:
    return "–" if not pair else f"[{_num(pair[0], digits)}, {_num(pair[1], digits)}]"


def _mib(value: Any) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(text: str, numeric: bool = False, css: str = "") -> str:
    classes = " ".join(c for c in ("n" if numeric else "", css) if c)
    return f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>"


def _not_run(row: dict[str, Any], width: int) -> list[str]:
    return [_td(_e(row["model"])), f'<td colspan="{width}"><i>not run: {_e(row.get("reason"))}</i></td>']


def _cost_cells(cost: dict[str, Any]) -> list[str]:
    return [
        _td(_num(cost.get("seconds_per_epoch"), 1) + " s" if cost else "–", True),
        _td(
            _mib(cost.get("peak_memory_bytes")) + (f" ({_e(cost['peak_memory_kind'])})" if cost else ""), True
        ),
        _td(
            f"{_num(cost.get('trainable_parameters'))} of {_num(cost.get('total_parameters'))}"
            if cost
            else "–",
            True,
        ),
    ]


COST_HEADER = ["s / epoch", "peak memory", "trainable parameters"]


def _models_table(
    models: list[dict[str, Any]], header: list[str], cells: Callable[[dict[str, Any]], list[str]]
) -> str:
    """A row per model: its name, ``cells(row)`` under ``header`` and its cost; the trainer's
    reason across the row where the method did not run."""
    rows = [
        [_td(_e(row["model"])), *cells(row), *_cost_cells(row.get("cost", {}))]
        if row["status"] == "ok"
        else _not_run(row, len(header) + len(COST_HEADER))
        for row in models
    ]
    return _table(["model", *header, *COST_HEADER], rows)


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _lora_against_full(section: dict[str, Any], figure: str, interval: str, better: str) -> str:
    """LoRA against full fine-tuning on the section's headline figure: do the intervals overlap?"""
    rows = {row["method"]: row for row in section["models"] if row["status"] == "ok"}
    lora, full = rows.get("lora"), rows.get("full")
    if lora is None or full is None:
        return "<p><b>LoRA against full fine-tuning:</b> not compared (both must have run).</p>"
    a, b = _pick(lora, figure), _pick(full, figure)
    ia, ib = _pick(lora, interval), _pick(full, interval)
    same = _overlap(ia, ib)
    verdict = (
        "the 95% intervals overlap: no difference shown at this size"
        if same
        else f"the 95% intervals do not overlap: {'LoRA' if (a < b) == (better == 'lower') else 'full fine-tuning'} is better"
    )
    return (
        f"<p><b>LoRA against full fine-tuning</b> ({_e(figure.split('.')[-1].replace('_', ' '))}, {better} is better): "
        f"{_num(a)} {_interval(ia)} against {_num(b)} {_interval(ib)}; {verdict}.</p>"
    )


def _pick(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value[part]
    return value


def _answer(text: str) -> str:
    return _e(text) if text else "<i class='muted'>(nothing: end of text came first)</i>"


def _header(section: dict[str, Any]) -> str:
    return f'<p class="muted">model {_e(section.get("model"))}; written {_e(section.get("written_at"))}</p>'


def _qa(section: dict[str, Any]) -> str:
    split = section["split"]
    parts = [
        _header(section),
        f"<p>Held out: {split['conversations']['heldout']} conversations ({split['turns']['heldout']} turns) "
        f"of {split['conversations']['train'] + split['conversations']['heldout']}, a seeded shuffle "
        f"(seed {split['seed']}); intervals: {section['models'][0].get('heldout', {}).get('bootstrap_reps')} "
        "bootstrap resamples of the held-out examples, 95%.</p>",
    ]
    header = ["answer-token loss", "95% interval", "perplexity", "95% interval"]
    table = _models_table(section["models"], header, _loss_cells)
    parts.append("<h3>Held-out loss and cost (the note's RQ1 table)</h3>" + table)
    parts.append(_lora_against_full(section, "heldout.mean_loss", "heldout.loss_interval", "lower"))
    answered = [row for row in section["models"] if row["status"] == "ok"]
    answer_rows = [
        [_td(_e(question))]
        + [_td(_answer(row["answers"].get(question, "")), css="answer") for row in answered]
        for question in section["questions"]
    ]
    parts.append(
        f"<h3>Greedy answers (at most {section['max_new_tokens']} new tokens)</h3>"
        + _table(["question", *[row["model"] for row in answered]], answer_rows)
    )
    return "".join(parts)


def _loss_cells(row: dict[str, Any]) -> list[str]:
    held = row["heldout"]
    return [
        _td(_num(held["mean_loss"]), True),
        _td(_interval(held["loss_interval"]), True),
        _td(_num(held["perplexity"], 1), True),
        _td(_interval(held["perplexity_interval"], 1), True),
    ]


def _hate(section: dict[str, Any]) -> str:
    labels = section["labels"]
    mapping = ", ".join(f"{k} -> {v}" for k, v in (section.get("label_map") or {}).items())
    parts = [
        _header(section),
        f"<p>{_e(section.get('layout'))}, classes mapped {_e(mapping)}; {_split_words(section.get('split') or {})}; "
        f"{section['scored_examples']} held-out posts scored by the label tokens' probabilities.</p>",
    ]
    header = ["accuracy", "95% Wilson", "macro-F1", *[f"F1 {label}" for label in labels]]
    table = _models_table(section["models"], header, lambda row: _accuracy_cells(row, labels))
    parts.append("<h3>Accuracy, F1 and cost</h3>" + table)
    parts.append(_lora_against_full(section, "accuracy", "accuracy_wilson", "higher"))
    for row in section["models"]:
        if row["status"] == "ok":
            parts.append(_per_class_and_confusion(row, labels))
    parts.append(_explanations(section))
    return "".join(parts)


def _accuracy_cells(row: dict[str, Any], labels: list[str]) -> list[str]:
    return [
        _td(_num(row["accuracy"]), True),
        _td(_interval(row["accuracy_wilson"]), True),
        _td(_num(row["macro_f1"]), True),
        *[_td(_num(row["per_class"][label]["f1"]), True) for label in labels],
    ]


def _split_words(split: dict[str, Any]) -> str:
    counts = split.get("counts", {})
    parts = ", ".join(f"{label} {c.get('train')} / {c.get('validation')}" for label, c in counts.items())
    seed = f", seed {split['seed']}" if "seed" in split else ""
    return _e(f"split {split.get('method')}{seed}, train / held out: {parts}")


def _per_class_and_confusion(row: dict[str, Any], labels: list[str]) -> str:
    per = row["per_class"]
    per_rows = [
        [_td(_e(label))] + [_td(_num(per[label][k]), True) for k in ("precision", "recall", "f1", "support")]
        for label in labels
    ]
    matrix = row["confusion"]["matrix"]
    confusion_rows = [
        [_td(f"true {_e(label)}")] + [_td(_num(v), True) for v in matrix[i]] for i, label in enumerate(labels)
    ]
    return (
        f"<h4>{_e(row['model'])}</h4><div style='display:flex;gap:2em'>"
        + _table(["label", "precision", "recall", "F1", "support"], per_rows)
        + _table(["", *[f"said {label}" for label in labels]], confusion_rows)
        + "</div>"
    )


def _explanations(section: dict[str, Any]) -> str:
    rows = []
    for row in section["models"]:
        for item in row.get("explanations", []):
            rows.append(
                [
                    _td(_e(row["model"])),
                    _td(_e(item["text"]), css="answer"),
                    _td(_e(item["truth"])),
                    _td(f"{_e(item['label'])} ({item['probabilities'][item['label']]:.2f})"),
                    _td(_e(item["explanation"]), css="answer"),
                ]
            )
    if not rows:
        return ""
    return (
        "<h3>Explanations generated after the scored label</h3><p class='muted'>The posts are "
        "real tweets and some are offensive.</p>"
        + _table(["model", "post", "truth", "scored label (p)", "explanation"], rows)
    )


def _btc(section: dict[str, Any]) -> str:
    header = ["predictor", "rows", "accuracy", "balanced acc.", "MCC", "predicted Increase", "biased"]
    rows = []
    for row in section["summary"]:
        if row.get("unavailable"):
            rows.append(
                [
                    _td(_e(row["predictor"])),
                    f'<td colspan="6"><i>unavailable: {_e(row["unavailable"])}</i></td>',
                ]
            )
            continue
        share = row.get("share_predicted_increase")
        rows.append(
            [
                _td(_e(row["predictor"])),
                _td(_num(row.get("rows")), True),
                _td(_num(row.get("accuracy")), True),
                _td(_num(row.get("balanced_accuracy")), True),
                _td(_num(row.get("mcc")), True),
                _td("–" if share is None else f"{share:.0%}", True),
                _td({True: "yes", False: "no"}.get(row.get("biased"), "–")),
            ]
        )
    notes = "".join(f"<li>{_e(note)}</li>" for note in section.get("notes", []))
    link = Path(section["report_html"]).as_uri()
    return (
        _header(section)
        + _table(header, rows)
        + f"<p>The full backtest (run {section['run_id']}): <a href='{_e(link)}'>{_e(section['report_html'])}</a></p>"
        + f"<ul>{notes}</ul>"
    )


RENDER = {"qa": _qa, "hate": _hate, "btc": _btc}


def render(sections: dict[str, dict[str, Any]]) -> str:
    present = [name for name in SECTION_ORDER if name in sections]
    warn = (
        f'<p class="warn">{_e(TINY_DISCLAIMER)}</p>' if any(sections[n].get("tiny") for n in present) else ""
    )
    toc = " · ".join(f"<a href='#{name}'>{_e(TITLES[name])}</a>" for name in present)
    body = "".join(
        f"<section id='{name}'><h2>{_e(TITLES[name])}</h2>"
        f"<blockquote><b>The note:</b> {_e(NOTE[name])}</blockquote>"
        f"<p><b>Here:</b></p>{RENDER[name](sections[name])}</section>"
        for name in present
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>The research note's three questions</title>"
        f"<style>{_STYLE}</style></head><body><h1>The research note's three questions: LoRA, QLoRA and "
        f"full fine-tuning</h1>{warn}<blockquote><b>The note:</b> {_e(NOTE['overall'])}</blockquote>"
        f"<p>{toc}</p>{body}</body></html>"
    )


def read_sections(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for name in SECTION_ORDER:
        path = out / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def write_report(out: Path) -> Path:
    """Rebuild ``<out>/report.html`` from every section there (written aside, then renamed)."""
    path = out / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".report.html.{os.getpid()}.tmp"
    staging.write_text(render(read_sections(out)), encoding="utf-8")
    os.replace(staging, path)
    return path
