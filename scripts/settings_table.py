"""Print (or check) the README's configuration table, generated from the settings classes.

    .venv/bin/python scripts/settings_table.py           # print the table
    .venv/bin/python scripts/settings_table.py --write   # replace it in README.md
tests/test_docs.py fails when README.md's table differs from this output.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from services.common.settings import CommonSettings

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"
SERVICES = ["ingest", "trainer", "inference", "backtest"]


def _env_names(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return " / ".join(f"`{choice}`" for choice in choices)
    return f"`HSIG_{name.upper()}`"


def _default(field: FieldInfo) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    text = "" if value is None else str(value)
    return f"`{text}`" if text else "(empty)"


def _rows(cls: type[CommonSettings], skip: set[str]) -> list[str]:
    rows = []
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {_env_names(name, field)} | {_default(field)} | {description} |")
    return rows


def render() -> str:
    common = set(CommonSettings.model_fields)
    lines = ["### Every service", "", "| variable | default | meaning |", "|---|---|---|"]
    lines += _rows(CommonSettings, set())
    for service in SERVICES:
        module = importlib.import_module(f"services.{service}.settings")
        classes = [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, CommonSettings) and value is not CommonSettings
        ]
        for cls in classes:
            lines += [
                "",
                f"### {service} (`{cls.__name__}`)",
                "",
                "| variable | default | meaning |",
                "|---|---|---|",
            ]
            lines += _rows(cls, common)
    return "\n".join(lines) + "\n"


def replace_in(text: str, table: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


if __name__ == "__main__":
    table = render()
    if "--write" in sys.argv:
        README.write_text(replace_in(README.read_text(), table))
        print(f"updated the settings table in {README}")
    else:
        print(table, end="")
