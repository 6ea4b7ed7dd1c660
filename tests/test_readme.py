"""The README's promises that a script can check: two quick-start commands, and CI runs the test one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the quick start has a ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands_demo_and_tests() -> None:
    demo, tests = quick_start_commands()
    assert demo.endswith("just demo")
    assert tests.endswith("just test")
    for command in (demo, tests):
        assert command.startswith("python3 -m venv .venv && ")  # each sets itself up


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_justfile_has_the_promised_recipes() -> None:
    justfile = (ROOT / "justfile").read_text()
    for recipe in ("demo", "serve", "test", "check", "fmt"):
        assert re.search(rf"^{recipe}\b.*:", justfile, re.M), recipe
