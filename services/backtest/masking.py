"""Entity masking for the anonymisation ablation: names in a headline replaced by placeholders.

Glasserman and Lin found that company names both distract an LLM and leak what it remembers
about the company; the ablation (``services.backtest.ablation``) scores the same rows as written
and masked. The masker replaces companies, people, tickers and coin names by ``[COMPANY]``,
``[PERSON]``, ``[TICKER]`` and ``[COIN]``; a possessive stays ("Apple's" -> "[COMPANY]'s").

Why a curated list and not an NER model: no maintained English NER model installs from the
package registries and runs here without fetching weights at run time (spaCy's models are
published outside PyPI, flair and transformers pipelines download from a model hub, and
neither package is a dependency). So the masker is a list shipped with the code
(``entities.txt``: its provenance and format are at its top) plus a few rules:

- ``$TSLA`` cashtags and ``(NYSE: X)`` / ``(Nasdaq: X)`` quotes are tickers, listed or not;
- a listed ticker of 2+ capitals counts bare unless it is an English word or common acronym
  (``TICKER_STOPLIST``), and an unlisted one in parentheses unless it is a common acronym;
- one to three capitalised words before a legal suffix ("Teradyne Inc.", "Acme Holdings") or
  before a firm's role ("Boot Barn CEO", "ThirdLove co-founder") are a company;
- a capitalised name after a role word ("CEO Lisa Su", "Sen. Rand Paul") is a person.

Everything is one compiled pattern: the list's forms as a prefix trie (longest form first at
each branch), the rules as alternatives beside it, so a headline is scanned once whatever the
list's length (bench/bench_masking.py measures it against a loop of one substitution per name).

Limits (measured recall and precision are in docs/look-ahead.md): names not in the list and
not caught by a rule stay (small caps, most foreign firms, most people); matching is
case-sensitive, so a name written in lower case stays (except coins); list names that are also
everyday words mask those words when capitalised ("Target", "Square", "Snap" at a headline's
start); Title-Case headlines can make the role and suffix rules take a word too many.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ENTITIES_FILE = Path(__file__).with_name("entities.txt")
KINDS = ("COMPANY", "PERSON", "TICKER", "COIN")


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Capitalised tokens that are tickers of listed companies but also words or acronyms a headline
# uses as such ("NOW", "LOW", "PM ET", "EA" in "each"): masked only as $cashtags or quotes.
TICKER_STOPLIST = _word_set(
    "WORK NOW SHOP SNOW TEAM COST LOW CAT HOG RACE LUV TRIP FIT LINK SPOT MA MO PM DE EL MS "
    "GS CI DD CL DB CS HD DG GD PG DIS SNAP BUD TAP PEP ADA SOL DOT EOS MET GPS HAL EA USB "
    "TM AMC WM CAT KEY ALL ARE ON IT AI"
)
# Capitals in parentheses that are acronyms, not tickers: "(ETF)", "(IPO)".
ACRONYMS = _word_set(
    "CEO CFO COO CTO ETF ETFS IPO GDP USA US UK EU UN SEC FED FDA FTC DOJ IRS CDC WHO IMF "
    "ECB BOE BOJ PBOC NYSE NASDAQ OTC API AI VR AR EV EVS LNG OPEC NATO NAFTA USMCA CPI PPI "
    "PMI PCE ISM ADP NFP QE ESG SPAC SPACS ICO ICOS NBA NFL MLB NHL COVID PPP LLC IOU ATM A "
    "I"
)
# Coin names that are also English words keep to their capitalised form ("a ripple effect").
COIN_WORDS = frozenset({"ether", "ripple", "tether", "stellar", "libra"})

LEGAL_SUFFIX = r"(?:Inc\.?|Corp\.?|Corporation|Co\.|Ltd\.?|LLC|PLC|plc|Holdings|Group|AG|SE|N\.V\.|S\.A\.)"
ROLE = (
    r"(?:CEO|CFO|COO|CTO|President|Chairman|Chairwoman|Chair|Sen\.|Senator|Rep\.|Gov\.|Governor|"
    r"Secretary|founder|co-founder|billionaire|Dr\.)"
)
NAME_WORD = r"[A-Z][a-z]+(?:['-][A-Z]?[a-z]+)?"
# "<Firm> CEO ...": capitalised words (inner capitals allowed: "DowDuPont") before a firm's role.
FIRM_WORD = r"[A-Z][\w&'.-]*"
FIRM_ROLE = r"(?:CEO|CFO|COO|co-CEO|co-founder|founder|chief)"
NOT_A_NAME = r"(?:The|A|An|Former|Its|Our|Their|His|Her|Top|New|Bank|Tech|Chinese|US|U\.S\.)"


@dataclass(frozen=True)
class Span:
    """One entity found in a text: characters [start, end) and its kind."""

    start: int
    end: int
    kind: str


def parse_entities(lines: Iterable[str]) -> dict[str, str]:
    """Surface form -> kind from ``entities.txt`` lines (first kind given to a form wins)."""
    forms: dict[str, str] = {}
    tickers: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        if kind not in KINDS or kind == "TICKER":
            raise ValueError(f"{ENTITIES_FILE.name} line {number}: kind must be COMPANY, PERSON or COIN")
        names, _, symbols = rest.partition(";")
        for name in (n.strip() for n in names.split("|")):
            if name:
                for form in _variants(name, kind):
                    forms.setdefault(form, kind)
        tickers += symbols.split()
    for ticker in tickers:  # after every name: "IBM" and "AMD" are names first
        if len(ticker) >= 2 and ticker not in TICKER_STOPLIST:
            forms.setdefault(ticker, "TICKER")
    return forms


def _variants(name: str, kind: str) -> list[str]:
    """The forms a name is matched in: as written, ALL CAPS (4+ letters), coins lower and plural."""
    out = [name]
    if len(name) >= 4 and name.upper() != name:
        out.append(name.upper())
    if kind == "COIN":
        plain = [name] + ([] if name.lower() in COIN_WORDS else [name.lower()])
        out += plain[1:] + [form + "s" for form in plain if form[-1].isalpha() and form[-1].islower()]
    return out


def _trie_pattern(words: Sequence[str]) -> str:
    """A regex matching any of ``words``, factored as a prefix trie; longer matches tried first."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_pattern(trie)


def _node_pattern(node: dict) -> str:
    ends_here = "" in node
    branches = [re.escape(char) + _node_pattern(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if ends_here:  # greedy optional: the longer form is tried before stopping here
        return f"(?:{body})?" if len(branches) > 1 or len(body) > 1 else f"{body}?"
    return body


class Masker:
    """Finds and masks entities with one compiled pattern built from a form -> kind table."""

    def __init__(self, forms: dict[str, str]) -> None:
        self.forms = forms
        names = sorted(forms, key=len, reverse=True)
        self.pattern = re.compile(
            r"(?P<cash>\$[A-Z]{1,5}(?:\.[A-Z])?)(?![\w])"
            r"|\((?:NYSE|NASDAQ|Nasdaq|NYSE American|AMEX|OTC|TSX|LSE)\s?:\s?(?P<quote>[A-Z]{1,5}(?:\.[A-Z])?)\)"
            rf"|(?<![\w&])(?P<suffixed>(?:{NAME_WORD}\s){{1,3}}{LEGAL_SUFFIX})(?![\w])"
            rf"|(?<![\w&])(?P<role>{ROLE})\s(?P<named>{NAME_WORD}(?:\s{NAME_WORD})?)(?![\w])"
            rf"|(?<![\w&$.])(?P<listed>{_trie_pattern(names)})(?![\w&]|\.\w)"
            rf"|(?<![\w&$.])(?!{NOT_A_NAME}\s)(?P<titled>{FIRM_WORD}(?:\s{FIRM_WORD}){{0,2}})(?=\s{FIRM_ROLE}\b)"
            r"|\((?P<paren>[A-Z]{1,5})\)"
        )

    def spans(self, text: str) -> list[Span]:
        """Every entity in ``text``, in order, not overlapping."""
        found = []
        for match in self.pattern.finditer(text):
            span = self._span(match)
            if span is not None:
                found.append(span)
        return found

    def mask(self, text: str) -> str:
        """``text`` with every entity replaced by its placeholder."""
        return self.pattern.sub(self._replace, text)

    def mask_many(self, texts: Iterable[str]) -> list[str]:
        sub, replace = self.pattern.sub, self._replace
        return [sub(replace, text) for text in texts]

    def _span(self, match: re.Match[str]) -> Span | None:
        group = match.lastgroup
        if group == "named":  # the role word stays: "CEO [PERSON]"
            return Span(match.start("named"), match.end("named"), "PERSON")
        if group == "listed":
            return Span(match.start(), match.end(), self.forms[match.group("listed")])
        if group == "paren":
            if match.group("paren") in ACRONYMS:
                return None
            return Span(match.start("paren"), match.end("paren"), "TICKER")
        kind = "COMPANY" if group in ("suffixed", "titled") else "TICKER"
        return Span(match.start(group), match.end(group), kind)  # type: ignore[arg-type]

    def _replace(self, match: re.Match[str]) -> str:
        span = self._span(match)
        if span is None:
            return match.group(0)
        whole = match.group(0)
        offset = match.start()
        return f"{whole[: span.start - offset]}[{span.kind}]{whole[span.end - offset :]}"


@lru_cache(maxsize=1)
def default_masker() -> Masker:
    """The masker of the shipped list (built once per process: compiling takes a few ms)."""
    return Masker(parse_entities(ENTITIES_FILE.read_text(encoding="utf-8").splitlines()))


def mask(text: str) -> str:
    return default_masker().mask(text)


def mask_many(texts: Iterable[str]) -> list[str]:
    return default_masker().mask_many(texts)


def measure(labelled: Iterable[dict], masker: Masker | None = None) -> dict[str, object]:
    """Recall and precision of ``masker`` against hand-labelled spans.

    ``labelled``: rows {"headline", "entities": [{"start", "end", "kind"}]}. A labelled span is
    found when the masker returns a span with the same start and end (whatever its kind: what
    the ablation needs is the name gone); ``typed`` also asks for the same kind, ``overlap`` only
    for a shared character. Precision: the masker's spans that match a labelled one exactly.
    """
    masker = masker or default_masker()
    gold_total = found = found_typed = found_overlap = predicted_total = 0
    per_kind: dict[str, list[int]] = {}
    for row in labelled:
        gold = [(e["start"], e["end"], e["kind"]) for e in row["entities"]]
        predicted = masker.spans(row["headline"])
        exact = {(s.start, s.end): s.kind for s in predicted}
        predicted_total += len(predicted)
        gold_total += len(gold)
        for start, end, kind in gold:
            hit = (start, end) in exact
            found += hit
            found_typed += hit and exact[(start, end)] == kind
            found_overlap += any(s.start < end and start < s.end for s in predicted)
            counts = per_kind.setdefault(kind, [0, 0])
            counts[0] += 1
            counts[1] += hit
    return {
        "labelled_entities": gold_total,
        "masked_spans": predicted_total,
        "recall": found / gold_total if gold_total else float("nan"),
        "recall_typed": found_typed / gold_total if gold_total else float("nan"),
        "recall_overlap": found_overlap / gold_total if gold_total else float("nan"),
        "precision": found / predicted_total if predicted_total else float("nan"),
        "recall_by_kind": {kind: hits / total for kind, (total, hits) in sorted(per_kind.items())},
    }


def read_labelled(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


if (
    __name__ == "__main__"
):  # python -m services.backtest.masking tests/fixtures/masking/labelled_headlines.jsonl
    import json
    import sys

    print(json.dumps(measure(read_labelled(Path(sys.argv[1]))), indent=1))
