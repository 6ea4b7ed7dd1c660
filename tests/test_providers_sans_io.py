"""The codec modules are sans-IO: no logging, no network, no clock, no event loop.

The check reads each codec module's source and walks its AST for ``import`` and ``from ... import``
statements, wherever they are (module level, inside a function, under ``TYPE_CHECKING``). A codec
module must import none of :data:`FORBIDDEN` itself, nor reach one through the voxbridge modules it
imports at run time (``from ..deadlines import deadline`` would bring trio in). Imports under
``if TYPE_CHECKING:`` are type-only and not followed. Package ``__init__`` modules are not followed:
they are the package's concern, not the codec's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Top-level modules a codec module may not import: logging, network I/O, clocks, event loops.
FORBIDDEN = frozenset({"logging", "httpx", "trio", "socket", "time", "asyncio"})

#: One codec module per provider, and the carrier's.
CODEC_MODULES = [
    "voxbridge.providers.openai_realtime",
    "voxbridge.providers.ultravox",
    "voxbridge.providers.gpt_live",
    "voxbridge.providers.deepgram",
    "voxbridge.providers.gemini",
    "voxbridge.carriers.twilio",
]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, *, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``tree``; with ``runtime_only``, not those under
    ``if TYPE_CHECKING:`` (their ``else`` branch is kept)."""
    if isinstance(tree, ast.Import | ast.ImportFrom):
        yield tree
        return
    if runtime_only and isinstance(tree, ast.If) and _is_type_checking(tree.test):
        for node in tree.orelse:
            yield from _import_nodes(node, runtime_only=runtime_only)
        return
    for child in ast.iter_child_nodes(tree):
        yield from _import_nodes(child, runtime_only=runtime_only)


def imported_modules(source: str, module: str, *, runtime_only: bool = False) -> set[str]:
    """The absolute names of the modules ``source`` (the module ``module``) imports.

    ``from X import y`` gives ``X``, and ``X.y`` too (``y`` may be a submodule); relative imports
    are resolved against ``module``'s package.
    """
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in _import_nodes(ast.parse(source), runtime_only=runtime_only):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def forbidden_in(names: set[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in FORBIDDEN}


#: The repository root: modules are found by path, without importing anything.
ROOT = Path(__file__).resolve().parents[1]


def _source_file(module: str) -> Path | None:
    """The ``.py`` file of a voxbridge module (not a package ``__init__``), or ``None``."""
    if module.split(".")[0] != "voxbridge":
        return None
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def forbidden_reach(module: str) -> dict[str, set[str]]:
    """Forbidden imports of ``module`` (all of its imports) and of the voxbridge modules it reaches
    through run-time imports: ``{importing module: forbidden names}``."""
    found: dict[str, set[str]] = {}
    path = _source_file(module)
    assert path is not None, module
    direct = forbidden_in(imported_modules(path.read_text(), module))
    if direct:
        found[module] = direct
    seen = {module}
    todo = [module]
    while todo:
        current = todo.pop()
        current_path = _source_file(current)
        assert current_path is not None
        runtime = imported_modules(current_path.read_text(), current, runtime_only=True)
        bad = forbidden_in(runtime)
        if bad:
            found.setdefault(current, set()).update(bad)
        for name in sorted(runtime - seen):
            seen.add(name)
            if _source_file(name) is not None:
                todo.append(name)
    return found


@pytest.mark.parametrize("module", CODEC_MODULES)
def test_codec_module_imports_no_io(module: str) -> None:
    assert forbidden_reach(module) == {}


def test_the_connect_step_is_where_ultravox_does_io() -> None:
    # the REST step moved out of the codec module; the checker sees its imports
    found = forbidden_reach("voxbridge.providers.ultravox_rest")
    assert found["voxbridge.providers.ultravox_rest"] == {"httpx", "logging", "trio"}
    assert found["voxbridge.deadlines"] == {"trio"}


def test_the_check_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
import os.path, trio.testing
from logging import getLogger
from . import events
from ..deadlines import deadline
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import httpx
else:
    import socket
def later():
    import time
    from asyncio import sleep
"""
    everything = imported_modules(source, "voxbridge.providers.x")
    assert forbidden_in(everything) == {
        "trio.testing",
        "logging",
        "logging.getLogger",
        "httpx",
        "socket",
        "time",
        "asyncio",
        "asyncio.sleep",
    }
    assert {"voxbridge.providers.events", "voxbridge.deadlines"} <= everything
    runtime = imported_modules(source, "voxbridge.providers.x", runtime_only=True)
    assert "httpx" not in runtime
    assert {"socket", "time", "trio.testing"} <= runtime
