from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.common.prompts import (
    ANSWER_MARKER,
    btc_trend_prompt,
    encode_prompt_answer,
    label_token_ids,
    parse_chat_text,
)


def test_trend_prompt_holds_every_field_in_utc() -> None:
    when = datetime(2020, 7, 17, 19, 51, tzinfo=timezone(timedelta(hours=-4)))
    prompt = btc_trend_prompt("  Bitcoin surges  ", when, "Sharp increase")
    assert "### Headline: Bitcoin surges\n" in prompt
    assert "Fri 2020-07-17 23:51 UTC" in prompt
    assert "### Market situation: Sharp increase" in prompt
    assert prompt.endswith(ANSWER_MARKER)
    assert "Unknown" in btc_trend_prompt("x", when, None)


@pytest.mark.parametrize(
    ("precision", "start", "shown"),
    [
        ("second", datetime(2020, 7, 17, 23, 51, 7, tzinfo=UTC), "### Time: Fri 2020-07-17 23:51 UTC\n"),
        ("minute", datetime(2020, 7, 17, 23, 51, tzinfo=UTC), "### Time: Fri 2020-07-17 23:51 UTC\n"),
        ("hour", datetime(2020, 7, 17, 23, tzinfo=UTC), "### Time: Fri 2020-07-17 23:00-00:00 UTC\n"),
        ("day", datetime(2020, 7, 17, tzinfo=UTC), "### Time: Fri 2020-07-17\n"),
        # A New York day starts at 04:00 UTC, a Kolkata one at 18:30 UTC the day before.
        ("day", datetime(2020, 7, 17, 4, tzinfo=UTC), "### Time: Fri 2020-07-17\n"),
        ("day", datetime(2020, 7, 16, 18, 30, tzinfo=UTC), "### Time: Fri 2020-07-17\n"),
    ],
)
def test_the_time_shows_no_part_its_source_did_not_give(precision: str, start: datetime, shown: str) -> None:
    prompt = btc_trend_prompt("Bitcoin surges", start, "Sharp increase", precision)
    assert shown in prompt
    if precision in ("second", "minute"):  # the text every adapter was tuned on, unchanged
        assert prompt == btc_trend_prompt("Bitcoin surges", start, "Sharp increase")
    with pytest.raises(ValueError, match="unknown time precision"):
        btc_trend_prompt("x", start, None, "week")


def test_naive_time_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        btc_trend_prompt("x", datetime(2020, 1, 1))


def test_chat_text_parsing() -> None:
    example = parse_chat_text("<s>[INST] What is BTC? [/INST] A cryptocurrency. </s>")
    assert (example.instruction, example.answer) == ("What is BTC?", "A cryptocurrency.")
    with pytest.raises(ValueError):
        parse_chat_text("no instruction markers here")


def test_answer_ids_match_label_ids(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = btc_trend_prompt("Stocks plunge", datetime(2020, 1, 1, tzinfo=UTC))
    labels = label_token_ids(tokenizer, ["Increase", "Unsure"])
    for label, ids in labels.items():
        encoded = encode_prompt_answer(tokenizer, prompt, label, bos_id=1, eos_id=2)
        assert encoded.input_ids[0] == 1 and encoded.input_ids[-1] == 2
        assert encoded.input_ids[encoded.answer_start : -1] == ids
    assert len(labels["Unsure"]) > 1  # the tiny tokenizer makes some labels multi-token
