"""Knowledge cutoffs as data: the shipped table, overrides, the tiny model's "none", bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.cutoffs import (
    CutoffSpec,
    cutoff_for,
    latest_of,
    parse_overrides,
    period_bounds,
    resolve_spec,
)
from services.common.errors import InvalidInput

LLAMA2 = [
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-7b-chat-hf",
    "meta-llama/Llama-2-13b-chat-hf",
]


@pytest.mark.parametrize("model", LLAMA2)
def test_the_shipped_table_gives_llama2_its_model_card_cutoffs(model: str) -> None:
    cutoff = cutoff_for(model)
    assert cutoff.status == "known"
    # A month counts as known through its end: September 2022 is data up to 1 October, 00:00 UTC.
    assert cutoff.pretraining == datetime(2022, 10, 1, tzinfo=UTC)
    assert cutoff.tuning == datetime(2023, 8, 1, tzinfo=UTC)
    assert cutoff.latest == cutoff.tuning
    assert "cutoff of September 2022" in cutoff.source and "up to July 2023" in cutoff.source


def test_a_local_directory_is_matched_by_its_name(tmp_path: Path) -> None:
    directory = tmp_path / "Llama-2-13b-chat-hf"
    directory.mkdir()
    assert cutoff_for(str(directory)).tuning_stated == "2023-07"


def test_the_tiny_model_has_none_and_an_unnamed_model_is_unknown(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert cutoff_for(str(tiny_model_dir)).status == "none"
    assert cutoff_for("tiny").status == "none"
    other = tmp_path / "some-model"
    other.mkdir()
    for model in (str(other), "gpt-4o-mini", "mistralai/Mistral-7B-v0.1"):
        cutoff = cutoff_for(model)
        assert cutoff.status == "unknown" and cutoff.latest is None


def test_the_setting_names_any_other_model_and_overrides_the_table() -> None:
    overrides = json.dumps(
        {
            "gpt-4o-mini": {"pretraining": "2023-10", "source": "vendor docs"},
            "meta-llama/Llama-2-7b-hf": {"pretraining": "2022-06", "tuning": "2023-01-15"},
            "secret-model": "unknown",
            "my-random-init": "none",
        }
    )
    gpt = cutoff_for("gpt-4o-mini", overrides)
    assert gpt.pretraining == datetime(2023, 11, 1, tzinfo=UTC) and gpt.tuning is None
    assert gpt.latest == gpt.pretraining and gpt.source == "vendor docs"
    llama = cutoff_for("meta-llama/Llama-2-7b-hf", overrides)
    assert llama.tuning == datetime(2023, 1, 16, tzinfo=UTC)  # a day counts through its end
    assert cutoff_for("secret-model", overrides).status == "unknown"
    assert cutoff_for("my-random-init", overrides).status == "none"
    assert latest_of([gpt, llama, cutoff_for("secret-model", overrides)]) == gpt.latest


def test_a_job_field_wins_over_the_setting() -> None:
    job = CutoffSpec(pretraining="2021", source="operator")
    cutoff = cutoff_for("meta-llama/Llama-2-7b-hf", json.dumps({"meta-llama/Llama-2-7b-hf": "unknown"}), job)
    assert cutoff.pretraining == datetime(2022, 1, 1, tzinfo=UTC) and cutoff.source == "operator"


def test_periods_end_at_their_end_in_utc() -> None:
    assert period_bounds("2022-12", "f") == (
        datetime(2022, 12, 1, tzinfo=UTC),
        datetime(2023, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("2020", "f")[1] == datetime(2021, 1, 1, tzinfo=UTC)
    instant = period_bounds("2022-09-30T22:00:00+02:00", "f")
    assert instant == (datetime(2022, 9, 30, 20, tzinfo=UTC),) * 2


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"pretraining": "Sept 2022"}, "pretraining", "is not a date"),
        ({"pretraining": "2022-13"}, "pretraining", "is not a date"),
        ({"pretraining": "2022-09-30T12:00:00"}, "pretraining", "no time zone"),
        ({"pretraining": "2999-01"}, "pretraining", "in the future"),
        ({"pretraining": "2022-01", "tuning": "2999-01"}, "tuning", "in the future"),
        ({"pretraining": "2024-05", "released": "2024-04-18"}, "pretraining", "after the model's release"),
        ({"pretraining": "2023-01", "tuning": "2022-06"}, "tuning", "ends before the pretraining"),
        ({"tuning": "2022-06"}, "pretraining", "Field required"),
        ({"pretraining": "2022-01", "when": "x"}, "when", "Extra inputs"),
    ],
)
def test_bad_cutoffs_in_the_setting_name_the_entry_and_field(entry: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_overrides(json.dumps({"other/model": entry}))
    assert f"HSIG_MODEL_CUTOFFS[other/model].{field}" in caught.value.message
    assert words in caught.value.message


def test_an_override_for_a_shipped_model_is_checked_against_its_release() -> None:
    # Llama 2 was released 2023-07-18: a cutoff stated as August 2023 is after it.
    with pytest.raises(InvalidInput, match=r"\[meta-llama/Llama-2-7b-hf\]\.tuning: 2023-08 is after"):
        parse_overrides(
            json.dumps({"meta-llama/Llama-2-7b-hf": {"pretraining": "2022-09", "tuning": "2023-08"}})
        )


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"m": 3})])
def test_a_malformed_setting_is_refused_naming_it(text: str) -> None:
    with pytest.raises(InvalidInput, match="HSIG_MODEL_CUTOFFS"):
        parse_overrides(text)


def test_the_future_is_judged_against_now() -> None:
    spec = CutoffSpec(pretraining="2026-06")
    with pytest.raises(InvalidInput, match="in the future"):
        resolve_spec(spec, "f", now=datetime(2026, 6, 15, tzinfo=UTC))  # June has not ended yet
    assert resolve_spec(spec, "f", now=datetime(2026, 7, 1, tzinfo=UTC)).status == "known"


def test_a_training_job_refuses_a_bad_cutoff_naming_the_field() -> None:
    from services.trainer.config import TrainConfig

    good = TrainConfig(name="x", base_model="llama-2-7b", base_model_cutoff={"pretraining": "2022-09"})
    assert good.base_model_cutoff is not None and good.base_model_cutoff.pretraining == "2022-09"
    cases = [
        ({"pretraining": "2999-01"}, "base_model_cutoff.pretraining", "in the future"),
        (
            {"pretraining": "2022-09", "tuning": "2023-09"},
            "base_model_cutoff.tuning",
            "after the model's release",
        ),
        ({"pretraining": "soon"}, "base_model_cutoff.pretraining", "is not a date"),
    ]
    for cutoff, field, words in cases:
        with pytest.raises(ValidationError) as caught:
            TrainConfig(name="x", base_model="llama-2-7b", base_model_cutoff=cutoff)
        message = str(caught.value)
        assert field in message and words in message
