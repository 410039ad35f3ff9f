"""Knowledge cutoffs as data: what a base model could have read before it was ever prompted.

A model scored on a headline from before its training data ends may remember what Bitcoin did
next; no adapter window can show that (services/backtest/leakage.py checks the adapter's own
rows only). Every model therefore carries a ``KnowledgeCutoff``:

- ``known``: a pretraining cutoff (and a tuning cutoff when the source gives one), with the
  source quoted. The shipped table holds the models the README names.
- ``unknown``: nothing says. Every row is "possibly seen"; such a model is never reported clean.
- ``none``: the model read nothing from the world. Only the tiny local model
  (services/common/tiny_model.py): random weights and a tokenizer learnt here from the bundled
  text, so there is nothing it could remember.

Precision. A cutoff is stated as a year, a month, a day or an instant. A stated period counts
as known through its END, in UTC: "2022-09" is data up to 2022-10-01T00:00:00Z (exclusive), the
end of 2022-09-30. A row is post-cutoff when its headline time is at or after that instant.
The end, not the start, is the cautious reading: the model may have read the whole month.

Overrides: ``HSIG_MODEL_CUTOFFS`` (JSON, every service) maps a model id, a directory's name or
an OpenAI-compatible endpoint's model name to ``{"pretraining": "2023-12", "tuning": "2024-03",
"released": "2024-04-18", "source": "..."}``, or to ``"unknown"`` / ``"none"``; a training job's
``base_model_cutoff`` field does the same for its base. Bad values (unparseable, in the future,
after the model's release) are InvalidInput naming the field: HTTP 4xx, CLI exit 2.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import InvalidInput

CutoffStatus = Literal["known", "unknown", "none"]
SETTING = "HSIG_MODEL_CUTOFFS"
TINY_STAMP_FILE = "tiny_model_stamp.json"  # services/common/tiny_model.py writes it

# The Llama 2 model card (https://huggingface.co/meta-llama/Llama-2-7b-hf, "Data Freshness"),
# the same for every size and for the chat models.
LLAMA2_SOURCE = (
    'Llama 2 model card, "Data Freshness": "The pretraining data has a cutoff of September 2022, '
    "but some tuning data is more recent, up to July 2023.\" Released 2023-07-18 (Meta's announcement)."
)
_LLAMA2 = {"pretraining": "2022-09", "tuning": "2023-07", "released": "2023-07-18", "source": LLAMA2_SOURCE}
SHIPPED: dict[str, dict[str, str]] = {
    "meta-llama/Llama-2-7b-hf": _LLAMA2,
    "meta-llama/Llama-2-13b-hf": _LLAMA2,
    "meta-llama/Llama-2-7b-chat-hf": _LLAMA2,
    "meta-llama/Llama-2-13b-chat-hf": _LLAMA2,
}


class KnowledgeCutoff(BaseModel):
    """What a model could have read: the end of its pretraining and tuning data, and who says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: CutoffStatus = Field(description="known, unknown (nothing says) or none (read nothing).")
    pretraining: AwareDatetime | None = Field(
        None, description="End of the pretraining data (exclusive, UTC): rows from here on are unseen."
    )
    tuning: AwareDatetime | None = Field(
        None, description="End of the tuning data (exclusive, UTC); none stated: as pretraining."
    )
    pretraining_stated: str | None = Field(None, description="The pretraining cutoff as the source gives it.")
    tuning_stated: str | None = Field(None, description="The tuning cutoff as the source gives it.")
    released: AwareDatetime | None = Field(None, description="When the model was released, if known.")
    source: str = Field("", description="Where the figures come from (quoted).")

    @property
    def latest(self) -> datetime | None:
        """The later of the two cutoffs: a row before it may have been read in some training."""
        known = [moment for moment in (self.pretraining, self.tuning) if moment is not None]
        return max(known) if known else None

    def describe(self) -> str:
        if self.status == "none":
            return "none (read nothing outside this project)"
        if self.status == "unknown":
            return "unknown (every row possibly seen)"
        tuning = f", tuning {self.tuning_stated}" if self.tuning_stated else ""
        return f"pretraining {self.pretraining_stated}{tuning}"


UNKNOWN = KnowledgeCutoff(status="unknown", source="no table entry, setting or job field names this model")
NONE = KnowledgeCutoff(status="none", source="the tiny local model: random weights, tokenizer learnt here")
NO_MODEL = KnowledgeCutoff(status="none", source="not a language model: computed from the rows alone")


class CutoffSpec(BaseModel):
    """A cutoff as a person states it (the job field, one entry of HSIG_MODEL_CUTOFFS)."""

    model_config = ConfigDict(extra="forbid")

    pretraining: str = Field(
        min_length=4, max_length=40, description="YYYY, YYYY-MM, YYYY-MM-DD or an ISO instant with zone."
    )
    tuning: str | None = Field(None, max_length=40, description="As pretraining; default: the same.")
    released: str | None = Field(None, max_length=40, description="Release date, if known.")
    source: str = Field("", max_length=2000, description="Where the figures come from.")


_PERIOD = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")


def period_bounds(text: str, field: str) -> tuple[datetime, datetime]:
    """(start, end) of a stated period in UTC; end exclusive. An instant is its own start and end."""
    value = text.strip()
    match = _PERIOD.match(value)
    try:
        if match:
            year, month, day = (int(part) if part else None for part in match.groups())
            if month is None:
                start = datetime(year, 1, 1, tzinfo=UTC)  # type: ignore[arg-type]
                return start, start.replace(year=start.year + 1)
            start = datetime(year, month, day or 1, tzinfo=UTC)  # type: ignore[arg-type]
            if day is not None:
                return start, start + timedelta(days=1)
            following = start.replace(year=year + month // 12, month=month % 12 + 1)  # type: ignore[operator]
            return start, following
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"{field}: {text!r} is not a date ({exc})", param=field) from exc
    if moment.tzinfo is None:
        raise InvalidInput(f"{field}: {text!r} has no time zone; add Z or an offset", param=field)
    moment = moment.astimezone(UTC)
    return moment, moment


def resolve_spec(
    spec: CutoffSpec, field: str, released: datetime | None = None, now: datetime | None = None
) -> KnowledgeCutoff:
    """A KnowledgeCutoff from a stated one, checked: parseable, not in the future, not after release.

    ``released``: the model's release from the shipped table, used when the spec gives none.
    """
    now = now or datetime.now(UTC)
    if spec.released is not None:
        released = period_bounds(spec.released, f"{field}.released")[0]
        if released > now:
            raise InvalidInput(
                f"{field}.released: {spec.released} is in the future", param=f"{field}.released"
            )
    ends = {}
    for name in ("pretraining", "tuning"):
        stated = getattr(spec, name)
        if stated is None:
            continue
        start, end = period_bounds(stated, f"{field}.{name}")
        if end > now:
            raise InvalidInput(
                f"{field}.{name}: {stated} ends {end.isoformat()}, in the future; a model cannot have read it yet",
                param=f"{field}.{name}",
            )
        if released is not None and start > released:
            raise InvalidInput(
                f"{field}.{name}: {stated} is after the model's release {released.date().isoformat()}",
                param=f"{field}.{name}",
            )
        ends[name] = end
    if "tuning" in ends and ends["tuning"] < ends["pretraining"]:
        raise InvalidInput(
            f"{field}.tuning: {spec.tuning} ends before the pretraining cutoff {spec.pretraining}",
            param=f"{field}.tuning",
        )
    return KnowledgeCutoff(
        status="known",
        pretraining=ends["pretraining"],
        tuning=ends.get("tuning"),
        pretraining_stated=spec.pretraining,
        tuning_stated=spec.tuning,
        released=released,
        source=spec.source,
    )


def _entry(raw: Any, field: str, released: datetime | None = None) -> KnowledgeCutoff:
    if raw == "unknown":
        return UNKNOWN.model_copy(update={"source": f"{field} says unknown"})
    if raw == "none":
        return KnowledgeCutoff(status="none", source=f"{field} says none")
    if not isinstance(raw, dict):
        raise InvalidInput(
            f'{field}: give {{"pretraining": "YYYY-MM", ...}}, "unknown" or "none", not {raw!r}', param=field
        )
    try:
        spec = CutoffSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"{field}.{where}: {first['msg']}", param=f"{field}.{where}") from exc
    return resolve_spec(spec, field, released)


def _key(model: str) -> str:
    """A model id or directory by its last component, case-folded: "/m/Llama-2-7b-hf" -> "llama-2-7b-hf"."""
    return PurePath(model.rstrip("/")).name.lower() if model.strip("/") else ""


def shipped_table() -> dict[str, KnowledgeCutoff]:
    return {model: _entry(raw, f"shipped[{model}]") for model, raw in SHIPPED.items()}


def parse_overrides(text: str) -> dict[str, KnowledgeCutoff]:
    """HSIG_MODEL_CUTOFFS (JSON) as {model: cutoff}; InvalidInput naming the entry and field."""
    if not text or not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{SETTING}: not valid JSON: {exc.msg}", param=SETTING) from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{SETTING}: give a JSON object of model -> cutoff", param=SETTING)
    return {
        str(model): _entry(value, f"{SETTING}[{model}]", _shipped_release(str(model)))
        for model, value in raw.items()
    }


def _shipped_release(model: str) -> datetime | None:
    for shipped, raw in SHIPPED.items():
        if _key(shipped) == _key(model):
            return period_bounds(raw["released"], "released")[0]
    return None


def is_tiny_model(model: str) -> bool:
    """The tiny local model: its preset name, or a directory the tiny build stamped."""
    if model == "tiny":
        return True
    try:
        return (Path(model) / TINY_STAMP_FILE).is_file()
    except (OSError, ValueError):
        return False


def _match(model: str, table: dict[str, KnowledgeCutoff]) -> KnowledgeCutoff | None:
    if model in table:
        return table[model]
    key = _key(model)
    for known, cutoff in table.items():
        if key and _key(known) == key:
            return cutoff
    return None


def cutoff_for(model: str, overrides: str = "", job: CutoffSpec | None = None) -> KnowledgeCutoff:
    """The cutoff of ``model`` (an id, a directory, an endpoint's model name).

    Order: the job's own field, then HSIG_MODEL_CUTOFFS, then the tiny model (none), then the
    shipped table, else unknown. A directory is matched by its name ("…/Llama-2-7b-hf").
    """
    if job is not None:
        return resolve_spec(job, "base_model_cutoff", _shipped_release(model))
    found = _match(model, parse_overrides(overrides))
    if found is not None:
        return found
    if is_tiny_model(model):
        return NONE
    return _match(model, shipped_table()) or UNKNOWN


def latest_of(cutoffs: list[KnowledgeCutoff]) -> datetime | None:
    """The latest known cutoff over several models (None when none is known)."""
    known = [cutoff.latest for cutoff in cutoffs if cutoff.latest is not None]
    return max(known) if known else None
