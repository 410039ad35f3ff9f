"""The Davidson hate-speech CSV: loads as implicit-hate Yes/No/Unsure, splits stratified and seeded."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from services.common.errors import InvalidInput
from services.trainer.config import DataConfig, TrainConfig
from services.trainer.datasets import (
    DAVIDSON_LABELS,
    DAVIDSON_LAYOUT,
    TSV_LAYOUT,
    Example,
    build_dataset,
    hate_layout,
    hate_split,
    load_davidson_csv,
    stratified_split,
)
from tests.conftest import DATA_DIR, REPO_ROOT

DAVIDSON = DATA_DIR / "hate_speech_davidson" / "labeled_data.csv"
HEADER = ",count,hate_speech,offensive_language,neither,class,tweet\n"


@pytest.fixture(scope="module")
def corpus() -> list[Example]:
    return load_davidson_csv(DAVIDSON, DataConfig(source="file", path=DAVIDSON))


def _text(example: Example) -> str:
    return example.prompt.split("### Text: ", 1)[1].rsplit("\n### Answer:", 1)[0]


def test_the_bundled_corpus_loads_with_the_mapping(corpus: list[Example]) -> None:
    assert len(corpus) == 24_783
    assert Counter(e.answer for e in corpus) == {"Yes": 1_430, "Unsure": 19_190, "No": 4_163}
    assert DAVIDSON_LABELS == {"0": "Yes", "1": "Unsure", "2": "No"}
    assert hate_layout(DAVIDSON) == DAVIDSON_LAYOUT
    assert "hate speech" in corpus[0].prompt and "Yes, No, or Unsure" in corpus[0].prompt


def test_newlines_inside_quotes_survive_and_entities_are_unescaped(corpus: list[Example]) -> None:
    texts = {e.key: _text(e) for e in corpus}
    assert sum("\n" in text for text in texts.values()) >= 900  # 917 raw; a few end in a newline
    assert texts["line:11"] == '" @rhythmixx_ :hobbies include: fighting Mariam"\n\nbitch'  # row id 9
    assert texts["line:14"].startswith('" Keeks is a bitch')  # the key is the record's first line
    first = texts["line:2"]
    assert "&amp;" not in first and "house. & as a man" in first
    assert not any("&amp;" in text or "&#128514;" in text for text in texts.values())
    assert "\U0001f602" in texts["line:7"]  # &#128514; is the emoji


def test_the_split_is_stratified_and_seeded(corpus: list[Example]) -> None:
    fraction = 0.2
    split = stratified_split("implicit-hate", corpus, fraction, seed=7, source=DAVIDSON)
    everyone = Counter(e.answer for e in corpus)
    validated = Counter(e.answer for e in split.validation)
    for label, total in everyone.items():
        assert abs(validated[label] - total * fraction) <= 1
    assert len(split.train) + len(split.validation) == len(corpus)
    assert {e.key for e in split.train}.isdisjoint(e.key for e in split.validation)
    assert split.labels == ("Yes", "No", "Unsure")
    again = stratified_split("implicit-hate", corpus, fraction, seed=7, source=DAVIDSON)
    other = stratified_split("implicit-hate", corpus, fraction, seed=8, source=DAVIDSON)
    assert again.sha256() == split.sha256()
    assert {e.key for e in other.validation} != {e.key for e in split.validation}


def test_build_dataset_records_mapping_seed_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "davidson.csv"
    rows = [f'{i},3,0,0,3,{i % 3},"tweet {i} &lt;3\nline two"\n' for i in range(60)]
    path.write_text(HEADER + "".join(rows))
    config = TrainConfig.model_validate(
        {
            "name": "hate",
            "task": "implicit-hate",
            "data": {"path": str(path), "validation_fraction": 0.25},
            "optim": {"seed": 3},
        }
    )
    split = build_dataset(config, "sqlite://", "BTC/USD", "1h")
    assert split.notes["layout"] == DAVIDSON_LAYOUT
    assert split.notes["label_map"] == DAVIDSON_LABELS
    assert split.notes["split"] == {
        "method": "stratified",
        "seed": 3,
        "validation_fraction": 0.25,
        "counts": {label: {"train": 15, "validation": 5} for label in ("Yes", "No", "Unsure")},
    }
    assert all("&lt;" not in e.prompt and "<3\nline two" in e.prompt for e in split.train)


def test_the_tsv_layout_still_loads_and_records_its_mapping(tmp_path: Path) -> None:
    path = tmp_path / "hate.tsv"
    path.write_text(
        "post\tclass\n" + "".join(f"p{i}\t{('implicit_hate', 'not_hate')[i % 2]}\n" for i in range(10))
    )
    assert hate_layout(path) == TSV_LAYOUT
    split = hate_split(path, DataConfig(source="file", path=path, validation_fraction=0.2), seed=0)
    assert [e.key for e in split.validation] == ["line:10", "line:11"]  # file order, as before
    assert split.notes["label_map"] == {"implicit_hate": "Yes", "not_hate": "No", "*": None}
    assert split.notes["split"]["method"] == "file-order"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,text,label\n1,hello,0\n", "neither hate corpus layout"),
        (HEADER + '0,3,0,0,3,5,"hi"\n', "line 2: class '5' is not 0, 1 or 2"),
        (HEADER + '0,3,0,0,3,2,"hi",extra\n', "line 2 has 8 fields"),
        (HEADER + '0,3,0,0,3,2,"&#32; "\n1,3,0,0,3,0,"x"\n', "line 2 has an empty tweet"),
    ],
)
def test_bad_csv_files_are_refused_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InvalidInput) as caught:
        hate_split(path, DataConfig(source="file", path=path), seed=0)
    text = str(caught.value)
    assert str(path) in text and message in text and "\n" not in text


def test_an_empty_split_or_a_foreign_label_is_refused(tmp_path: Path, corpus: list[Example]) -> None:
    with pytest.raises(InvalidInput, match="the validation split is empty"):
        stratified_split("implicit-hate", corpus[:50], 0.0, seed=0, source=DAVIDSON)
    with pytest.raises(InvalidInput, match="the train split is empty"):
        stratified_split("implicit-hate", [], 0.1, seed=0, source=DAVIDSON)
    path = tmp_path / "hate.tsv"
    path.write_text("post\tclass\nsome text\thate\nother text\tnot_hate\n")
    config = DataConfig.model_construct(
        **{
            **DataConfig(source="file", path=path).__dict__,
            "hate_labels": {"hate": "Maybe", "not_hate": "No"},
        }
    )  # bypasses the config check, as a hand-made object could
    with pytest.raises(InvalidInput, match=r"line:2: label 'Maybe' is not Yes, No or Unsure"):
        hate_split(path, config, seed=0)


def test_the_cli_refuses_a_wrong_layout_csv_with_exit_2(
    settings_env: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "wrong.csv"
    data.write_text("id,text,label\n1,hello,0\n")
    config = tmp_path / "job.json"
    config.write_text(
        json.dumps(
            {
                "name": "hate",
                "task": "implicit-hate",
                "base_model": str(tiny_model_dir),
                "data": {"path": str(data)},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.pipeline.cli", "train", "run", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hsig: error:") and str(data) in last and "neither hate corpus layout" in last


def test_max_examples_is_a_seeded_sample_not_the_files_first_rows() -> None:
    """The file is sorted by tweet text, so its first rows would be a biased sample."""
    data = DataConfig(source="file", path=DAVIDSON, max_examples=2_000)
    split = hate_split(DAVIDSON, data, seed=0)
    labels = [example.answer for example in split.train + split.validation]
    assert len(labels) == 2_000
    assert 0.72 < labels.count("Unsure") / 2_000 < 0.83  # the corpus: 19,190 / 24,783 = 0.774
    lines = sorted(int(example.key.split(":")[1]) for example in split.train + split.validation)
    assert lines[0] < 2_000 < 20_000 < lines[-1]  # drawn from the whole file, not its head
    assert hate_split(DAVIDSON, data, seed=0).sha256() == split.sha256()
