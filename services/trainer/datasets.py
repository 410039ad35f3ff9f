"""Training examples for the three tasks, as prompt/answer pairs from the shared prompt module.

- btc-trend: labelled rows (database or an exported file), split into time windows
  (``services/trainer/windows.py``); Flat rows are left out.
- chat: a parquet or JSON-lines ``text`` corpus in the Llama-2 ``<s>[INST] ... [/INST] ...</s>``
  format (guanaco-llama2-1k); a malformed line is an error naming the line.
- implicit-hate: a corpus answering "Yes, No or Unsure: does this text contain hate speech?",
  in one of two layouts told apart by the header:
  - a TSV of ``post`` and ``class`` (the SALT-NLP implicit-hate layout); classes map through
    ``data.hate_labels`` / ``data.hate_other``;
  - the Davidson et al. (ICWSM 2017) CSV (unnamed id, ``count``, ``hate_speech``,
    ``offensive_language``, ``neither``, ``class``, ``tweet``; data/hate_speech_davidson/): class
    0 (hate speech) -> Yes, 2 (neither) -> No, 1 (offensive but not hate) -> Unsure
    (``DAVIDSON_LABELS``). Newlines inside quoted tweets are kept; HTML entities (``&amp;``,
    ``&#128514;``) are unescaped.

Chat and the implicit-hate TSV have no time, so they split in file order (the last share
validates). The Davidson corpus is sorted by text, so it splits stratified: per label, a shuffle
seeded by ``optim.seed`` and the last ``data.validation_fraction`` of it validates. Either way
the mapping and the split (method, seed, counts per label per split) go into
``DatasetSplit.notes`` (``label_map``, ``split``), which the manifest records under ``notes``,
beside ``class_balance``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.common.db import session_scope
from services.common.embargo import EVERY_ROW
from services.common.errors import InvalidInput
from services.common.labelled_rows import read_labelled_rows
from services.common.prompts import (
    TREND_LABELS,
    btc_trend_prompt,
    chat_prompt,
    implicit_hate_prompt,
    parse_chat_text,
)
from services.common.schemas import LabelledRowOut
from services.trainer.config import DataConfig, TimeWindow, TrainConfig
from services.trainer.windows import (
    WindowPlan,
    check_plan,
    longest_label_span_seconds,
    plan_by_fraction,
    row_time,
    split_rows,
)

log = logging.getLogger(__name__)
_TURN_END = re.compile(r"\s*</s>\s*")
_UNANSWERED = re.compile(r"\s*(?:<s>)?\s*\[INST\](.*?)\[/INST\]\s*", re.S)


@dataclass(frozen=True)
class Example:
    """One prompt and the answer the model learns; ``key`` identifies its source row or line."""

    prompt: str
    answer: str
    key: str
    time: datetime | None = None


@dataclass
class DatasetSplit:
    """What a job trains and evaluates on, with the facts the manifest records."""

    task: str
    train: list[Example]
    validation: list[Example]
    test: list[Example] = field(default_factory=list)
    labels: tuple[str, ...] = ()
    embargo_seconds: float = 0.0
    first_row_time: datetime | None = None
    last_row_time: datetime | None = None
    class_balance: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # counts; hate corpora add label_map, split

    def sha256(self) -> str:
        """Hash of every example in order: the same data gives the same hash on any machine."""
        digest = hashlib.sha256()
        for name, examples in (("train", self.train), ("validation", self.validation), ("test", self.test)):
            for example in examples:
                digest.update(json.dumps([name, example.key, example.prompt, example.answer]).encode())
        return digest.hexdigest()

    def summary(self) -> str:
        parts = [f"{name}: {len(getattr(self, name))}" for name in ("train", "validation", "test")]
        balance = "; ".join(
            f"{name} " + ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
            for name, counts in self.class_balance.items()
        )
        return f"{self.task} examples, {', '.join(parts)}" + (
            f"; class balance: {balance}" if balance else ""
        )


# --- btc-trend rows ------------------------------------------------------------------------


def load_rows_from_database(
    database_url: str, symbol: str, horizon: str, exchange: str | None = None
) -> list[LabelledRowOut]:
    """Every row of ``symbol`` and ``horizon`` (of ``exchange``, if given), oldest first; the time
    windows split them afterwards (services/trainer/windows.py)."""
    with session_scope(database_url) as session:
        return read_labelled_rows(session, symbol, horizon, exchange=exchange or None)


def load_rows_from_file(path: Path) -> list[LabelledRowOut]:
    """Rows exported in the LabelledRowOut shape: .jsonl, .json (a list), .csv or .parquet."""
    records = _read_records(path)
    rows = []
    for number, record in enumerate(records, start=1):
        if isinstance(record.get("situation_candles"), str):  # CSV/parquet keep lists as JSON text
            record["situation_candles"] = json.loads(record["situation_candles"] or "[]")
        try:
            rows.append(LabelledRowOut.model_validate(record))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidInput(f"{path}: row {number}: {where}: {first['msg']}", param="data.path") from exc
    return sorted(rows, key=lambda row: (row.headline_time, row.id))


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", param="data.path")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        loaded = _json_or_error(path.read_text(encoding="utf-8"), path, None)
        if not isinstance(loaded, list) or not all(isinstance(item, dict) for item in loaded):
            raise InvalidInput(f"{path}: expected a JSON list of objects", param="data.path")
        return loaded
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        return [
            {key: (None if _is_missing(value) else value) for key, value in record.items()}
            for record in frame.to_dict(orient="records")
        ]
    raise InvalidInput(
        f"{path}: unsupported file type {suffix!r} (.jsonl, .json, .csv, .parquet)", param="data.path"
    )


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and value != value  # NaN from pandas


def _json_or_error(text: str, path: Path, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {line}" if line is not None else "content"
        raise InvalidInput(f"{path}: {where} is not valid JSON: {exc.msg}", param="data.path") from exc


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _json_or_error(line, path, number)
            if not isinstance(record, dict):
                raise InvalidInput(f"{path}: line {number} is not a JSON object", param="data.path")
            records.append(record)
    return records


def trend_split(rows: list[LabelledRowOut], data: DataConfig) -> DatasetSplit:
    """Time windows over btc-trend rows; refuses empty or single-class training windows."""
    usable = [row for row in rows if row.label in TREND_LABELS]
    if not usable:
        raise InvalidInput(
            "no Increase/Decrease rows to train on (check symbol, horizon and source)", param="data"
        )
    plan, min_embargo = _window_plan(usable, data)
    check_plan(plan, min_embargo)
    split = split_rows(usable, plan)
    _check_windows(split.rows)
    examples = {name: [_trend_example(row) for row in found] for name, found in split.rows.items()}
    train_rows = split.rows["train"]
    return DatasetSplit(
        task="btc-trend",
        train=examples["train"],
        validation=examples.get("validation", []),
        test=examples.get("test", []),
        labels=TREND_LABELS,
        embargo_seconds=plan.embargo_seconds,
        # On the split axis (known_at - 1 s), like the windows: the leakage guard adds the
        # embargo (measured from that time) to last_row_time to find where training labels end.
        first_row_time=row_time(train_rows[0]),
        last_row_time=row_time(train_rows[-1]),
        class_balance={name: dict(Counter(row.label for row in found)) for name, found in split.rows.items()},
        notes={
            "flat_or_other_dropped": len(rows) - len(usable),
            "dropped_in_gaps": split.dropped_in_gaps,
            "purged": split.purged,
        },
    )


def _window_plan(usable: list[LabelledRowOut], data: DataConfig) -> tuple[WindowPlan, float]:
    """The windows and the least embargo they need: the longest label span of the rows they hold.

    Explicit windows: only their rows count, as the walk-forward's plan counts only the rows of
    its range (a long label before the first window is never read). Shares: the cuts depend on
    the embargo, and the windows cover every row, so every row counts."""
    windows: dict[str, TimeWindow] = {}
    if data.train or data.validation or data.test:
        if not (data.train and data.validation):
            raise InvalidInput("explicit windows need at least train and validation", param="data")
        windows = {"train": data.train, "validation": data.validation}
        if data.test:
            windows["test"] = data.test
    bounds = [(window.start, window.end) for window in windows.values()] or EVERY_ROW
    needed = longest_label_span_seconds(usable, bounds)
    embargo = data.embargo_seconds if data.embargo_seconds is not None else needed
    if windows:
        return WindowPlan(windows=windows, embargo_seconds=embargo), needed
    return plan_by_fraction(usable, data.validation_fraction, data.test_fraction, embargo), needed


def _check_windows(rows: dict[str, list[LabelledRowOut]]) -> None:
    for name, found in rows.items():
        if not found:
            raise InvalidInput(f"the {name} window holds no rows", param=f"data.{name}")
    train_labels = {row.label for row in rows["train"]}
    if len(train_labels) < 2:
        raise InvalidInput(
            f"the train window holds one class only ({', '.join(sorted(train_labels))}): nothing to learn",
            param="data.train",
        )


def _trend_example(row: LabelledRowOut) -> Example:
    prompt = btc_trend_prompt(row.headline, row.headline_time, row.market_situation, row.time_precision)
    return Example(prompt=prompt, answer=row.label, key=f"row:{row.id}", time=row.headline_time)


# --- chat and implicit-hate corpora ------------------------------------------------------


def load_chat_corpus(path: Path, max_examples: int | None = None) -> list[Example]:
    """guanaco-llama2 style ``text`` column from .parquet or .jsonl."""
    if path.suffix.lower() not in (".parquet", ".jsonl"):
        raise InvalidInput(f"{path}: a chat corpus is .parquet or .jsonl", param="data.path")
    records = _read_records(path)
    examples: list[Example] = []
    for number, record in enumerate(records, start=1):
        text = record.get("text")
        if not isinstance(text, str):
            raise InvalidInput(f"{path}: line {number} has no string 'text' field", param="data.path")
        try:
            turns = chat_turns(text)
        except ValueError as exc:
            raise InvalidInput(f"{path}: line {number}: {exc}", param="data.path") from exc
        for turn, (prompt, answer) in enumerate(turns):
            examples.append(Example(prompt, answer, key=f"line:{number}:turn:{turn}"))
        if max_examples and len(examples) >= max_examples:
            return examples[:max_examples]
    return examples


def chat_turns(text: str) -> list[tuple[str, str]]:
    """(prompt, answer) per turn. A third of guanaco-llama2-1k is multi-turn
    (``... a1 </s><s>[INST] q2 [/INST] a2 </s>``): each later answer is learnt with the
    conversation so far as its prompt, so no answer ever contains another turn."""
    turns = [turn for turn in _TURN_END.split(text) if turn.strip()]
    if not turns:
        raise ValueError("empty conversation")
    pairs, history = [], ""
    for turn in turns:
        unanswered = _UNANSWERED.fullmatch(turn)
        if unanswered:  # "[INST] q [/INST] </s>" occurs in guanaco: context, not an example
            history += f"{chat_prompt(unanswered.group(1))} </s><s>"
            continue
        parsed = parse_chat_text(turn)
        prompt = history + chat_prompt(parsed.instruction)
        pairs.append((prompt, parsed.answer))
        history = f"{prompt} {parsed.answer} </s><s>"
    if not pairs:
        raise ValueError("no turn has an answer")
    return pairs


HATE_ANSWERS = ("Yes", "No", "Unsure")
# Davidson et al.'s majority class -> the note's answer: hate speech is Yes, neither is No, and
# offensive language that is not hate speech is the unclear middle, Unsure.
DAVIDSON_LABELS: dict[str, str] = {"0": "Yes", "1": "Unsure", "2": "No"}
DAVIDSON_COLUMNS = ("count", "hate_speech", "offensive_language", "neither", "class", "tweet")
TSV_LAYOUT, DAVIDSON_LAYOUT = "implicit-hate-tsv", "davidson-csv"


def hate_layout(path: Path) -> str:
    """Which hate corpus layout ``path`` has, from its header: the implicit-hate TSV (``post``
    and ``class``) or the Davidson CSV. A ``.csv`` with neither header is refused; any other
    file is read as the TSV (whose loader names the missing columns)."""
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", param="data.path")
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        first = handle.readline().rstrip("\r\n")
    if {"post", "class"} <= {name.strip() for name in first.split("\t")}:
        return TSV_LAYOUT
    header = {name.strip() for name in next(csv.reader([first]), [])}
    if set(DAVIDSON_COLUMNS) <= header:
        return DAVIDSON_LAYOUT
    if path.suffix.lower() == ".csv":
        raise InvalidInput(
            f"{path}: neither hate corpus layout: the header has no 'post' and 'class' (implicit-hate "
            f"TSV) nor {', '.join(DAVIDSON_COLUMNS)} (Davidson CSV)",
            param="data.path",
        )
    return TSV_LAYOUT


def load_hate_tsv(path: Path, data: DataConfig) -> list[Example]:
    """A TSV with ``post`` and ``class`` columns; classes map through data.hate_labels."""
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", param="data.path")
    examples = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"post", "class"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"{path}: missing column(s) {', '.join(sorted(missing))}", param="data.path")
        for number, record in enumerate(reader, start=2):  # line 1 is the header
            if None in record or any(value is None for value in record.values()):
                raise InvalidInput(
                    f"{path}: line {number} does not have one field per column", param="data.path"
                )
            post, klass = record["post"].strip(), record["class"].strip()
            if not post:
                raise InvalidInput(f"{path}: line {number} has an empty post", param="data.path")
            answer = data.hate_labels.get(klass, data.hate_other)
            if answer is None:
                continue
            examples.append(Example(implicit_hate_prompt(post), answer, key=f"line:{number}"))
            if data.max_examples and len(examples) >= data.max_examples:
                break
    return examples


def load_davidson_csv(path: Path, data: DataConfig) -> list[Example]:
    """The Davidson et al. CSV: ``class`` maps through DAVIDSON_LABELS, ``tweet`` is the text
    (HTML entities unescaped, newlines inside quotes kept). ``key`` is the record's first line."""
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", param="data.path")
    examples = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = set(DAVIDSON_COLUMNS) - set(header)
            if missing:
                raise InvalidInput(
                    f"{path}: not the Davidson CSV layout: missing column(s) {', '.join(sorted(missing))}",
                    param="data.path",
                )
            klass_at, tweet_at = header.index("class"), header.index("tweet")
            line = reader.line_num + 1
            for record in reader:
                number, line = line, reader.line_num + 1  # a quoted tweet may span several lines
                if not record:
                    continue
                if len(record) != len(header):
                    raise InvalidInput(
                        f"{path}: line {number} has {len(record)} fields, the header {len(header)}",
                        param="data.path",
                    )
                klass, tweet = record[klass_at].strip(), html.unescape(record[tweet_at]).strip()
                if klass not in DAVIDSON_LABELS:
                    raise InvalidInput(
                        f"{path}: line {number}: class {klass!r} is not 0, 1 or 2", param="data.path"
                    )
                if not tweet:
                    raise InvalidInput(f"{path}: line {number} has an empty tweet", param="data.path")
                examples.append(
                    Example(implicit_hate_prompt(tweet), DAVIDSON_LABELS[klass], key=f"line:{number}")
                )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"{path}: not a readable UTF-8 CSV: {exc}", param="data.path") from exc
    return examples


def hate_split(path: Path, data: DataConfig, seed: int) -> DatasetSplit:
    """The implicit-hate split of either layout, with its mapping and split in ``notes``."""
    layout = hate_layout(path)
    if layout == DAVIDSON_LAYOUT:
        examples = load_davidson_csv(path, data)
        if data.max_examples and len(examples) > data.max_examples:
            # The file is sorted by tweet text: its first N rows are no sample of it; a seeded one is.
            examples = random.Random(seed).sample(examples, data.max_examples)
        _check_hate_answers(path, examples)
        split = stratified_split("implicit-hate", examples, data.validation_fraction, seed, path)
        label_map: dict[str, str | None] = dict(DAVIDSON_LABELS)
        method: dict[str, Any] = {"method": "stratified", "seed": seed}
    else:
        examples = load_hate_tsv(path, data)
        _check_hate_answers(path, examples)
        split = ordered_split("implicit-hate", examples, data.validation_fraction)
        label_map = {**data.hate_labels, "*": data.hate_other}  # "*": any other class
        method = {"method": "file-order"}
    split.notes.update(
        layout=layout,
        label_map=label_map,
        split={
            **method,
            "validation_fraction": data.validation_fraction,
            "counts": _label_counts(split.train, split.validation),
        },
    )
    return split


def _check_hate_answers(path: Path, examples: list[Example]) -> None:
    for example in examples:
        if example.answer not in HATE_ANSWERS:
            raise InvalidInput(
                f"{path}: {example.key}: label {example.answer!r} is not Yes, No or Unsure",
                param="data.path",
            )


def _label_counts(train: list[Example], validation: list[Example]) -> dict[str, dict[str, int]]:
    found = Counter(e.answer for e in train), Counter(e.answer for e in validation)
    labels = sorted(set(found[0]) | set(found[1]), key=_label_order)
    return {label: {"train": found[0][label], "validation": found[1][label]} for label in labels}


def _label_order(label: str) -> int:
    return HATE_ANSWERS.index(label) if label in HATE_ANSWERS else len(HATE_ANSWERS)


def stratified_split(
    task: str, examples: list[Example], validation_fraction: float, seed: int, source: Path
) -> DatasetSplit:
    """Per label, a seeded shuffle whose last ``validation_fraction`` (rounded) validates; both
    parts are shuffled again, so any prefix of the validation part is a fair sample of it."""
    rng = random.Random(seed)
    train: list[Example] = []
    validation: list[Example] = []
    for label in sorted({e.answer for e in examples}, key=_label_order):
        group = [e for e in examples if e.answer == label]
        rng.shuffle(group)
        cut = len(group) - round(len(group) * validation_fraction)
        train += group[:cut]
        validation += group[cut:]
    rng.shuffle(train)
    rng.shuffle(validation)
    for name, part in (("train", train), ("validation", validation)):
        if not part:
            raise InvalidInput(
                f"{source}: the {name} split is empty ({len(examples)} usable example(s), "
                f"validation_fraction {validation_fraction})",
                param="data.validation_fraction" if len(examples) else "data.path",
            )
    balance = {
        "train": dict(Counter(e.answer for e in train)),
        "validation": dict(Counter(e.answer for e in validation)),
    }
    if len(balance["train"]) < 2:
        raise InvalidInput(f"{source}: the training split holds one class only", param="data.path")
    labels = tuple(sorted({e.answer for e in examples}, key=_label_order))
    return DatasetSplit(task=task, train=train, validation=validation, labels=labels, class_balance=balance)


def ordered_split(task: str, examples: list[Example], validation_fraction: float) -> DatasetSplit:
    if len(examples) < 2:
        raise InvalidInput(f"{task}: {len(examples)} usable example(s); need at least 2", param="data.path")
    validation_count = max(1, round(len(examples) * validation_fraction))
    train, validation = examples[:-validation_count], examples[-validation_count:]
    balance = {}
    labels: tuple[str, ...] = ()
    if task == "implicit-hate":
        balance = {
            "train": dict(Counter(e.answer for e in train)),
            "validation": dict(Counter(e.answer for e in validation)),
        }
        labels = tuple(sorted({e.answer for e in examples}, key=("Yes", "No", "Unsure").index))
        if len(balance["train"]) < 2:
            raise InvalidInput("implicit-hate: the training part holds one class only", param="data.path")
    return DatasetSplit(task=task, train=train, validation=validation, labels=labels, class_balance=balance)


# --- entry point ---------------------------------------------------------------------------


def build_dataset(
    config: TrainConfig, database_url: str, default_symbol: str, default_horizon: str
) -> DatasetSplit:
    """The split a job trains on; raises InvalidInput for anything that cannot be trained."""
    data = config.data
    if config.task == "btc-trend":
        if data.source == "file":
            assert data.path is not None  # checked by TrainConfig
            rows = load_rows_from_file(data.path)
        else:
            rows = load_rows_from_database(
                database_url, data.symbol or default_symbol, data.horizon or default_horizon, data.exchange
            )
        split = trend_split(rows, data)
    elif config.task == "chat":
        assert data.path is not None
        split = ordered_split(
            "chat", load_chat_corpus(data.path, data.max_examples), data.validation_fraction
        )
        # The manifest records the split (a seeded one is written to the file by its maker:
        # services/pipeline/research_qa.py).
        split.notes["split"] = {
            "method": "file-order",
            "validation_fraction": data.validation_fraction,
            "counts": {"train": len(split.train), "validation": len(split.validation)},
        }
    else:
        assert data.path is not None
        split = hate_split(data.path, data, config.optim.seed)
    log.info("%s", split.summary())
    return split
