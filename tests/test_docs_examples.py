"""The documentation runs and names only what exists.

* ``docs/examples/embed_trio_websocket.py`` is run for real on loopback (port 0): a simulated Twilio
  call through it gets audio back and ends with 1000 / ``caller_stop``.
* ``docs/embedding.md`` shows that file verbatim (so the two cannot drift apart).
* Every ``--flag`` in ``docs/timeouts.md`` is a ``voxbridge serve`` flag; its table's defaults and
  environment variables are those of ``Settings``; every ``Reason`` is documented with its close
  code; every metric is in ``docs/operations.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from functools import partial
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry

from voxbridge.cli import build_parser
from voxbridge.errors import Reason
from voxbridge.metrics import Metrics
from voxbridge.session import CallRegistry
from voxbridge.settings import ENV_ALIASES, Settings
from voxbridge.testing import simulate_call

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "embed_trio_websocket.py"
INCLUDE = "<!-- include: docs/examples/embed_trio_websocket.py -->"
BUDGET = 20.0  # seconds of real time


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_trio_websocket", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_flags() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {option for action in serve._actions for option in action.option_strings}


def table_rows(text: str) -> list[list[str]]:
    """Every row of every Markdown table in ``text``, as stripped cells (separators skipped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [cell.strip() for cell in line[1:-1].split("|")]
        if all(set(cell) <= set("-: ") for cell in cells):
            continue
        rows.append(cells)
    return rows


# --- the embedding example ------------------------------------------------------------------------


def test_embedding_doc_shows_the_example_verbatim() -> None:
    doc = read("embedding.md")
    match = re.search(re.escape(INCLUDE) + r"\n```python\n(.*?)^```$", doc, re.DOTALL | re.M)
    assert match, f"docs/embedding.md has no ```python block right after {INCLUDE}"
    assert match.group(1) == EXAMPLE.read_text(encoding="utf-8")


async def test_embed_example_bridges_a_call_on_loopback() -> None:
    example = load_example()
    registry = CollectorRegistry()
    calls = CallRegistry()
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(example.main, 0, metrics=Metrics(registry), calls=calls)
            )
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/twilio/media")
            result = await simulate_call(url, seconds=0.5)
            await calls.wait_empty()  # the caller sees the close before the call's accounting
            nursery.cancel_scope.cancel()

    assert result.frames_sent > 0
    assert result.frames_received > 0
    assert result.close_code == 1000
    assert result.close_reason == "caller_stop"
    [record] = calls.recent
    assert record.reason is Reason.CALLER_STOP
    assert record.call_sid == result.call_sid
    get = registry.get_sample_value
    assert get("voxbridge_call_disconnects_total", {"reason": "caller_stop"}) == 1
    assert get("voxbridge_calls_active") == 0


def doc_block_defining(doc: str, name: str) -> str:
    """The ```python block of ``docs/<doc>`` that defines ``name``."""
    for block in re.findall(r"^```python\n(.*?)^```$", read(doc), re.DOTALL | re.M):
        if f"def {name}(" in block:
            return block
    raise AssertionError(f"docs/{doc} has no python block defining {name}")


# The in-memory test shown in docs/embedding.md, collected and run as one of ours.
_snippet: dict[str, object] = {}
exec(
    compile(
        doc_block_defining("embedding.md", "test_silent_caller_ends_with_idle_timeout"),
        str(DOCS / "embedding.md"),
        "exec",
    ),
    _snippet,
)
test_embedding_doc_in_memory_snippet = _snippet["test_silent_caller_ends_with_idle_timeout"]


# --- docs/timeouts.md -----------------------------------------------------------------------------


def test_every_flag_in_timeouts_doc_is_a_serve_flag() -> None:
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", read("timeouts.md")))
    assert mentioned, "docs/timeouts.md mentions no flags"
    missing = mentioned - serve_flags()
    assert not missing, f"not flags of `voxbridge serve`: {sorted(missing)}"


def test_timeouts_table_matches_settings() -> None:
    fields = {field.name: field for field in attrs.fields(Settings)}
    checked = set()
    for cells in table_rows(read("timeouts.md")):
        flag = re.fullmatch(r"`(--[a-z0-9-]+)`", cells[1]) if len(cells) > 3 else None
        if flag is None:
            continue
        name = flag.group(1)[2:].replace("-", "_")
        assert cells[0] == f"`{name}`", cells
        field = fields[name]
        for env in (f"VOXBRIDGE_{name.upper()}", *ENV_ALIASES.get(name, ())):
            assert f"`{env}`" in cells[2], (env, cells)
        default = re.match(r"[\d.]+", cells[3])
        assert default, cells
        assert float(default.group()) == field.default, (name, cells[3], field.default)
        checked.add(name)
    deadlines = {
        "start_timeout",
        "idle_timeout",
        "max_call_duration",
        "connect_timeout",
        "send_timeout",
        "keepalive_interval",
        "pong_timeout",
        "close_timeout",
        "drain_timeout",
        "tcp_user_timeout",
    }
    assert deadlines <= checked, f"missing from the table: {sorted(deadlines - checked)}"


def test_every_env_variable_in_timeouts_doc_is_a_setting() -> None:
    names = {f"VOXBRIDGE_{field.name.upper()}" for field in attrs.fields(Settings)}
    names |= {alias for aliases in ENV_ALIASES.values() for alias in aliases}
    mentioned = set(
        re.findall(r"\b(?:VOXBRIDGE_[A-Z_]+|WS_IDLE_TIMEOUT_SECONDS)\b", read("timeouts.md"))
    )
    assert mentioned - names == set()


# --- reasons and metrics --------------------------------------------------------------------------


def test_every_reason_is_documented() -> None:
    text = read("timeouts.md") + read("architecture.md")
    missing = [reason.value for reason in Reason if f"`{reason.value}`" not in text]
    assert not missing, f"reasons missing from docs/timeouts.md and docs/architecture.md: {missing}"


def test_reason_table_close_codes_match_the_code() -> None:
    values = {reason.value for reason in Reason}
    documented = {}
    for cells in table_rows(read("architecture.md")):
        reason = re.fullmatch(r"`([a-z_]+)`", cells[0])
        if reason and reason.group(1) in values and len(cells) > 1:
            code = re.fullmatch(r"\d{4}", cells[1])
            if code:
                documented[Reason(reason.group(1))] = int(code.group())
    assert set(documented) == set(Reason), "the reason table must list every Reason"
    for reason, code in documented.items():
        assert code == reason.close_code, (reason, code)


@pytest.mark.parametrize("doc", ["operations.md"])
def test_every_metric_is_documented(doc: str) -> None:
    text = read(doc)
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in text, f"{name} missing from docs/{doc}"


# --- links ----------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_docs_resolve() -> None:
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            name, _, anchor = target.partition("#")
            linked = DOCS / name if name else page
            assert linked.exists(), f"{page.name}: broken link {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name}: no anchor {target}"
