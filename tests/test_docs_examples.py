"""The documentation runs and names only what exists.

* ``docs/examples/embed_trio_websocket.py`` is run for real on loopback (port 0): a simulated Twilio
  call through it gets audio back and ends with 1000 / ``caller_stop``.
* ``docs/embedding.md`` shows that file verbatim (so the two cannot drift apart).
* Every ``--flag`` in ``docs/timeouts.md`` is a ``voxbridge serve`` flag; its table's defaults and
  environment variables are those of ``Settings``; every ``Reason`` is documented with its close
  code; every metric is in ``docs/metrics.md``.
* ``docs/providers.md`` names only real flags, variables and providers, lists every registered
  provider, and its knob tables list exactly the fakes' keyword arguments; every ``serve`` flag is
  documented somewhere; no doc names a metric that does not exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
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
from voxbridge.providers.registry import PROVIDERS
from voxbridge.session import CallRegistry
from voxbridge.settings import ENV_ALIASES, Settings
from voxbridge.testing import FakeOpenAIRealtime, FakeUltravox, simulate_call

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


@pytest.mark.parametrize("doc", ["metrics.md"])
def test_every_metric_is_documented(doc: str) -> None:
    text = read(doc)
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in text, f"{name} missing from docs/{doc}"


# --- docs/providers.md ---------------------------------------------------------------------------


def setting_variables() -> set[str]:
    """Every ``VOXBRIDGE_*`` variable ``Settings.from_env`` reads: its fields' and each
    provider's own settings' (``VOXBRIDGE_OPENAI_MODEL``)."""
    names = {f"VOXBRIDGE_{field.name.upper()}" for field in attrs.fields(Settings)}
    return names | {option.variables[0] for option in Settings.options()}


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in ``text``: its rows (header first) as stripped cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        rows = table_rows(line)
        if line.strip().startswith("|"):
            if current is None:
                current = []
                found.append(current)
            current.extend(rows)
        else:
            current = None
    return found


def backticked(cell: str) -> str:
    """The name in a table cell that starts with one in backticks."""
    match = re.match(r"`([\w-]+)`", cell)
    assert match, f"expected a `name` in the cell {cell!r}"
    return match.group(1)


def test_every_flag_in_providers_doc_is_a_serve_flag() -> None:
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", read("providers.md")))
    assert "--provider-url" in mentioned
    missing = mentioned - serve_flags()
    assert not missing, f"not flags of `voxbridge serve`: {sorted(missing)}"


def test_every_env_variable_in_providers_doc_is_read_by_settings() -> None:
    mentioned = set(re.findall(r"\bVOXBRIDGE_[A-Z_]+\b", read("providers.md")))
    assert mentioned - setting_variables() == set()
    for spec in PROVIDERS.values():
        for variable in spec.key_variables:  # keys: environment only, documented, and read
            assert f"`{variable}`" in read("providers.md"), variable
            settings = Settings.from_env({variable: "k"})
            assert settings.provider_settings[spec.name].api_key == "k", variable


def test_close_code_table_is_each_providers_own() -> None:
    """The close-code table in providers.md says what each spec's ``close_reasons`` says."""
    table = next(t for t in tables(read("providers.md")) if t[0][1] == "`agent_hangup`")
    documented = {}
    for row in table[1:]:
        codes = {
            reason: {int(code) for code in re.findall(r"\b\d{4}\b", cell)}
            for reason, cell in (("agent_hangup", row[1]), ("upstream_rejected", row[2]))
        }
        documented[backticked(row[0])] = codes
    declared = {
        name: {
            reason: {code for code, why in spec.close_reasons.items() if why.value == reason}
            for reason in ("agent_hangup", "upstream_rejected")
        }
        for name, spec in PROVIDERS.items()
    }
    assert documented == declared


def test_providers_doc_lists_every_registered_provider() -> None:
    first = tables(read("providers.md"))[0]
    assert first[0][:2] == ["provider", "`--provider`"], first[0]
    documented = {backticked(row[1]) for row in first[1:]}
    assert documented == set(PROVIDERS)


@pytest.mark.parametrize(("index", "fake"), [(0, FakeOpenAIRealtime), (1, FakeUltravox)])
def test_fake_knob_tables_match_the_fakes(index: int, fake: type) -> None:
    knob_tables = [
        table for table in tables(read("providers.md")) if table[0] == ["knob", "effect"]
    ]
    assert len(knob_tables) == 2, "docs/providers.md has one knob table per fake"
    documented = {backticked(row[0]) for row in knob_tables[index][1:]}
    parameters = set(inspect.signature(fake.__init__).parameters) - {"self"}
    assert documented == parameters, (fake.__name__, documented ^ parameters)


def test_every_serve_flag_is_documented() -> None:
    text = read("timeouts.md") + read("operations.md") + read("providers.md") + read("carriers.md")
    missing = sorted(
        f for f in serve_flags() if f.startswith("--") and f != "--help" and f"`{f}`" not in text
    )
    assert not missing, (
        f"flags documented in none of timeouts, operations, providers, carriers: {missing}"
    )


def test_docs_name_only_existing_metrics() -> None:
    families = Metrics().registry.collect()
    names = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    for page in sorted(DOCS.glob("*.md")):
        if page.name == "benchmarks.md":  # the benchmark suite's own page
            continue
        for name in set(
            re.findall(r"(?<![\w:])voxbridge_[a-z_]+", page.read_text(encoding="utf-8"))
        ):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            if base in {"voxbridge_schema", "voxbridge_replicas"}:
                continue  # the PostgreSQL journal's tables
            if base == "voxbridge_token":
                continue  # the per-call token's parameter in a carrier's answer (carriers.md)
            assert base in names, f"{page.name}: no metric {name}"


def test_built_features_are_not_listed_as_unbuilt() -> None:
    section = read("architecture.md").split("## Designed but not built yet", 1)[1]
    section = section.split("\n## ", 1)[0]
    for built in ("barge-in", "Ultravox", "reconnect"):
        assert built.lower() not in section.lower(), built


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
