"""The README promises what the code does: two commands first, a configuration table that
is the settings classes' own, and a CI entry point that runs `make test`."""

from __future__ import annotations

import runpy

from tests.conftest import REPO_ROOT

readme_text = (REPO_ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    head = "\n".join(readme_text.splitlines()[:20])
    assert "make demo" in head and "make test" in head


def test_configuration_table_matches_the_settings_classes() -> None:
    script = runpy.run_path(str(REPO_ROOT / "scripts" / "settings_table.py"))
    expected = script["replace_in"](readme_text, script["render"]())
    assert readme_text == expected, "run `.venv/bin/python scripts/settings_table.py --write` and commit"


def test_ci_runs_make_test() -> None:
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
