"""Entity masking of 1,000,000 headlines: rows/s of the one-pass masker against a naive loop.

The headlines are the bundled CNBC ones (the 2017-2020 CSV and the RSS snapshots), repeated
with a number appended so no two are the same string, up to the count asked for. Timed:

- the masker (services/backtest/masking.py): the shipped list as one trie-compiled pattern with
  the rules beside it, one scan per headline;
- a baseline measured in the same run on the first ``--baseline-rows`` headlines: one
  precompiled whole-word ``re.sub`` per listed form (longest first), the plain way to apply a
  list, so each headline is scanned once per form.

Run: .venv/bin/python bench/bench_masking.py [--rows N] [--baseline-rows M]
"""

from __future__ import annotations

import argparse
import csv
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from services.backtest.masking import default_masker

DATA = Path(__file__).resolve().parents[1] / "data"


def bundled_headlines() -> list[str]:
    with (DATA / "cnbc_headlines" / "cnbc_headlines.csv").open(encoding="utf-8") as handle:
        titles = [(row.get("Headlines") or "").strip() for row in csv.DictReader(handle)]
    for snapshot in sorted((DATA / "cnbc_rss").glob("*.xml")):
        titles += [
            (item.findtext("title") or "").strip() for item in ET.parse(snapshot).getroot().iter("item")
        ]
    return sorted({title for title in titles if title})


def generated(count: int) -> list[str]:
    base = bundled_headlines()
    return [f"{base[i % len(base)]} ({i // len(base)})" for i in range(count)]


def naive_mask(forms: dict[str, str]):  # type: ignore[no-untyped-def]
    patterns = [
        (re.compile(r"(?<![\w&$.])" + re.escape(form) + r"(?![\w&]|\.\w)"), f"[{kind}]")
        for form, kind in sorted(forms.items(), key=lambda item: len(item[0]), reverse=True)
    ]

    def mask(text: str) -> str:
        for pattern, placeholder in patterns:
            text = pattern.sub(placeholder, text)
        return text

    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    args = parser.parse_args()
    headlines = generated(args.rows)
    started = time.perf_counter()
    masker = default_masker()
    build = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    masked = masker.mask_many(headlines)
    one_pass, one_pass_cpu = time.perf_counter() - started, time.process_time() - cpu
    changed = sum(a != b for a, b in zip(headlines, masked, strict=True))
    sample = headlines[: args.baseline_rows]
    naive = naive_mask(masker.forms)
    started, cpu = time.perf_counter(), time.process_time()
    for text in sample:
        naive(text)
    loop, loop_cpu = time.perf_counter() - started, time.process_time() - cpu
    fast_rate, naive_rate = args.rows / one_pass, len(sample) / loop
    print(f"list: {len(masker.forms):,} forms; pattern built in {build * 1000:.0f} ms")
    print(
        f"one-pass masker: {args.rows:,} headlines in {one_pass:.2f} s = {fast_rate:,.0f} rows/s ({changed:,} changed)"
    )
    print(
        f"naive loop (one re.sub per form): {len(sample):,} headlines in {loop:.2f} s = {naive_rate:,.0f} rows/s"
    )
    print(f"ratio: {fast_rate / naive_rate:.0f}x")
    # CPU seconds too: on a shared host the wall clock counts other processes' time.
    print(
        f"per CPU second: one-pass {args.rows / one_pass_cpu:,.0f} rows/s, naive {len(sample) / loop_cpu:,.0f} "
        f"rows/s, ratio {(args.rows / one_pass_cpu) / (len(sample) / loop_cpu):.0f}x"
    )


if __name__ == "__main__":
    main()
