"""docs/reliability.md checked against the code: reasons, close codes, deadlines, tests, cases."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
from test_e2e_bad_input import CASES

from voxbridge.errors import Reason
from voxbridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
SETTINGS = {field.name for field in attrs.fields(Settings)} | {"teardown_timeout"}
TICKED = re.compile(r"`([^`]+)`")


def tables() -> dict[str, list[dict[str, str]]]:
    """Each ``##`` section's table, as rows of ``{column: cell}``."""
    found: dict[str, list[dict[str, str]]] = {}
    section, header = "", None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                assert len(cells) == len(header), f"{section}: {line}"
                found.setdefault(section, []).append(dict(zip(header, cells, strict=True)))
    return found


TABLES = tables()
ROWS = [(section, row) for section, rows in TABLES.items() for row in rows]


def first_ticked(cell: str) -> str | None:
    match = TICKED.search(cell)
    return match.group(1) if match else None


@pytest.mark.parametrize(
    ("section", "row"), ROWS, ids=[f"{s}: {r[next(iter(r))]}" for s, r in ROWS]
)
def test_every_row_names_real_reasons_codes_deadlines_and_tests(
    section: str, row: dict[str, str]
) -> None:
    reason = row.get("reason", "—")
    code = row.get("close code", "—")
    if reason != "—" and "reason" in row:
        value = first_ticked(reason)
        assert value in {r.value for r in Reason}, f"{section}: unknown reason {reason!r}"
        if code != "—" and "(hypercorn)" not in code:
            assert int(code) == Reason(value).close_code, f"{section}: {value} closes with {code}"
    deadline = row.get("deadline", "—")
    if deadline != "—":
        assert first_ticked(deadline) in SETTINGS, f"{section}: no setting {deadline!r}"
    test = row.get("test", "—")
    if test not in ("—", "same"):
        reference = first_ticked(test)
        assert reference is not None, f"{section}: test cell {test!r}"
        path, _, function = reference.partition("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        if function:
            assert re.search(rf"^(async )?def {function}\(", source, re.M), reference


def test_every_reason_has_a_row() -> None:
    listed = {first_ticked(row["reason"]) for row in TABLES["Every ending"]}
    assert listed == {reason.value for reason in Reason}


def test_every_bad_input_case_is_listed_with_its_reason_and_code() -> None:
    rows = {first_ticked(row["case"]): row for row in TABLES["Bad input from the carrier"]}
    for case in CASES:
        assert case.name in rows, f"{case.name} is not in docs/reliability.md"
        row = rows[case.name]
        assert first_ticked(row["reason"]) == case.reason.value, case.name
        assert int(row["close code"].split()[0]) == case.close_code, case.name
