"""The codec modules, the providers' and the carriers', are sans-IO: no logging, no network or
file I/O, no clock, no event loop.

Which modules: every registered provider's and carrier's codec module, derived from the registries
(``spec.codec``'s module), so a provider or carrier added to a registry is checked without anyone
listing it here.

What is checked, in each codec module and in every voxbridge module it reaches through run-time
imports (``from ..deadlines import deadline`` would bring trio in), by walking the AST (nothing is
imported or run):

* imports of :data:`FORBIDDEN_MODULES` (logging, network, clocks, event loops, the OS, dynamic
  imports), wherever they are (module level, inside a function, under ``TYPE_CHECKING`` in the
  codec module itself); imports under ``if TYPE_CHECKING:`` are type-only and not followed;
* names and attributes that do I/O, read a clock or log without an import of their own: the
  builtins of :data:`FORBIDDEN_BUILTINS` (``open``, ``print``, ``__import__``, ...), the dotted
  names of :data:`FORBIDDEN_NAMES` (``sys.stderr``, ``datetime.datetime.now``, ``warnings.warn``),
  resolved through the module's imports and aliases, any attribute in :data:`FORBIDDEN_ATTRIBUTES`
  whatever its object (``.read_text``, ``.urlopen``, ``.now``), and ``getattr`` with one of those
  as a constant.

A function that does I/O for someone else may be exempted in :data:`EXEMPT`, by name; no checked
module may then name it. Package ``__init__`` modules are not followed: they are the package's
concern, not the codec's.
"""

from __future__ import annotations

import ast
import builtins
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxbridge.carriers.registry import SPECS as CARRIER_SPECS
from voxbridge.providers.registry import SPECS as PROVIDER_SPECS

#: Modules (and their submodules) a codec may not import: logging, network and file I/O, clocks,
#: event loops, processes, the OS, dynamic imports.
FORBIDDEN_MODULES = frozenset(
    {
        "aiohttp",
        "asyncio",
        "builtins",
        "concurrent",
        "http.client",
        "http.server",
        "httpx",
        "hypercorn",
        "importlib",
        "logging",
        "multiprocessing",
        "os",
        "psycopg",
        "requests",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "sqlite3",
        "ssl",
        "structlog",
        "subprocess",
        "tempfile",
        "threading",
        "time",
        "trio",
        "trio_websocket",
        "urllib.request",
        "websockets",
    }
)

#: Builtins that do I/O or run code a static check cannot see.
FORBIDDEN_BUILTINS = frozenset(
    {"open", "print", "input", "breakpoint", "__import__", "exec", "eval", "compile"}
)

#: Dotted names (after resolving the module's imports) that log, write or read a clock.
FORBIDDEN_NAMES = frozenset(
    {
        "sys.stdout",
        "sys.stderr",
        "sys.stdin",
        "sys.__stdout__",
        "sys.__stderr__",
        "sys.__stdin__",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
        "warnings.warn",
        "warnings.warn_explicit",
    }
)

#: Attributes that do I/O or read a clock whatever object they are taken from (a ``Path``, a
#: module imported under another name, ``wave.open``).
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "open",
        "read_text",
        "read_bytes",
        "write_text",
        "write_bytes",
        "urlopen",
        "create_connection",
        "import_module",
        "now",
        "utcnow",
        "today",
        "monotonic",
        "perf_counter",
        "sleep",
        "stdout",
        "stderr",
    }
)

#: Functions that do I/O on purpose, for a caller that is not a codec, in modules codecs reach:
#: module -> function names. No checked module may name them.
EXEMPT: dict[str, frozenset[str]] = {
    "voxbridge.audio": frozenset({"read_wav_as_ulaw"}),  # the CLI's `call --wav`
}


def codec_modules() -> list[str]:
    """Every registered provider's and carrier's codec module (``spec.codec`` is the class)."""
    modules = set()
    for spec in (*PROVIDER_SPECS, *CARRIER_SPECS):
        assert inspect.isclass(spec.codec), f"{spec.name}: spec.codec must be the codec class"
        modules.add(spec.codec.__module__)
    return sorted(modules)


CODEC_MODULES = codec_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(
    tree: ast.AST, *, runtime_only: bool, skip: frozenset[str] = frozenset()
) -> Iterator[ast.AST]:
    """Every node under ``tree``; with ``runtime_only``, not those under ``if TYPE_CHECKING:``
    (their ``else`` branch is kept); never the bodies of the functions named in ``skip``."""
    if isinstance(tree, ast.FunctionDef | ast.AsyncFunctionDef) and tree.name in skip:
        return
    yield tree
    if runtime_only and isinstance(tree, ast.If) and _is_type_checking(tree.test):
        for node in tree.orelse:
            yield from _nodes(node, runtime_only=runtime_only, skip=skip)
        return
    for child in ast.iter_child_nodes(tree):
        yield from _nodes(child, runtime_only=runtime_only, skip=skip)


def _import_nodes(tree: ast.AST, *, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``tree`` (see :func:`_nodes`)."""
    for node in _nodes(tree, runtime_only=runtime_only):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _base(node: ast.ImportFrom, module: str) -> str:
    """The absolute module of ``from X import ...`` in ``module`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.rsplit(".", 1)[0].split(".")
    base = ".".join(package[: len(package) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(source: str, module: str, *, runtime_only: bool = False) -> set[str]:
    """The absolute names of the modules ``source`` (the module ``module``) imports.

    ``from X import y`` gives ``X``, and ``X.y`` too (``y`` may be a submodule); relative imports
    are resolved against ``module``'s package.
    """
    names: set[str] = set()
    for node in _import_nodes(ast.parse(source), runtime_only=runtime_only):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = _base(node, module)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _banned(name: str, banned: frozenset[str]) -> bool:
    return any(name == entry or name.startswith(entry + ".") for entry in banned)


def forbidden_in(names: set[str]) -> set[str]:
    """The module names of ``names`` that :data:`FORBIDDEN_MODULES` covers."""
    return {name for name in names if _banned(name, FORBIDDEN_MODULES)}


def _aliases(tree: ast.AST, module: str) -> dict[str, str]:
    """Local name -> the dotted name it is bound to by an import (``dt`` -> ``datetime``)."""
    bound: dict[str, str] = {}
    for node in _import_nodes(tree, runtime_only=False):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    bound[root] = root
        else:
            base = _base(node, module)
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bound


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` as a dotted name with its root resolved through ``aliases``, or ``None``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def forbidden_names(source: str, module: str) -> set[str]:
    """What in ``source`` (the module ``module``) logs, does I/O or reads a clock without an
    import of its own: ``open()``, ``sys.stderr``, ``.now``, ``getattr(.., 'urlopen')``, ...
    (functions of :data:`EXEMPT` skipped)."""
    tree = ast.parse(source)
    aliases = _aliases(tree, module)
    exempt = {name for names in EXEMPT.values() for name in names}
    found: set[str] = set()
    for node in _nodes(tree, runtime_only=True, skip=EXEMPT.get(module, frozenset())):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in FORBIDDEN_BUILTINS and node.id not in aliases:
                found.add(f"{node.id}()")
            if _banned(aliases.get(node.id, ""), FORBIDDEN_NAMES):
                found.add(aliases[node.id])  # from sys import stderr as err; err
            if node.id in exempt:
                found.add(f"{node.id} (exempt from the check: not for codecs)")
        elif isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_ATTRIBUTES:
                found.add(f".{node.attr}")
            dotted = _dotted(node, aliases)
            if dotted is not None and _banned(dotted, FORBIDDEN_NAMES):
                found.add(dotted)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in FORBIDDEN_ATTRIBUTES | FORBIDDEN_BUILTINS
        ):
            found.add(f"getattr(..., {node.args[1].value!r})")
    return found


#: The repository root: modules are found by path, without importing them.
ROOT = Path(__file__).resolve().parents[1]


def _source_file(module: str) -> Path | None:
    """The ``.py`` file of a voxbridge module (not a package ``__init__``), or ``None``."""
    if module.split(".")[0] != "voxbridge":
        return None
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def forbidden_reach(module: str) -> dict[str, set[str]]:
    """What is forbidden in ``module`` (all of its imports, and its names) and in the voxbridge
    modules it reaches through run-time imports (their run-time imports and names):
    ``{module: forbidden imports and names}``."""
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
        source = current_path.read_text()
        runtime = imported_modules(source, current, runtime_only=True)
        bad = forbidden_in(runtime) | forbidden_names(source, current)
        if bad:
            found.setdefault(current, set()).update(bad)
        for name in sorted(runtime - seen):
            seen.add(name)
            if _source_file(name) is not None:
                todo.append(name)
    return found


@pytest.mark.parametrize("module", CODEC_MODULES)
def test_codec_module_does_no_io(module: str) -> None:
    assert forbidden_reach(module) == {}


def test_every_registered_codec_module_is_checked() -> None:
    # derived from the registries: the Ultravox codec, not its REST connect step
    for module in (
        "voxbridge.providers.openai_realtime",
        "voxbridge.providers.ultravox",
        "voxbridge.providers.gpt_live",
        "voxbridge.providers.deepgram",
        "voxbridge.providers.gemini",
        "voxbridge.carriers.twilio",
        "voxbridge.carriers.telnyx",
        "voxbridge.carriers.plivo",
        "voxbridge.carriers.vonage",
    ):
        assert module in CODEC_MODULES
    assert "voxbridge.providers.ultravox_rest" not in CODEC_MODULES


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
from urllib.parse import urlsplit
if TYPE_CHECKING:
    import httpx
else:
    import socket
def later():
    import time
    from asyncio import sleep
    import urllib.request
    from importlib import import_module
"""
    everything = imported_modules(source, "voxbridge.providers.x")
    assert forbidden_in(everything) == {
        "os.path",
        "trio.testing",
        "logging",
        "logging.getLogger",
        "httpx",
        "socket",
        "time",
        "asyncio",
        "asyncio.sleep",
        "urllib.request",
        "importlib",
        "importlib.import_module",
    }  # urllib.parse is not I/O
    assert {"voxbridge.providers.events", "voxbridge.deadlines"} <= everything
    runtime = imported_modules(source, "voxbridge.providers.x", runtime_only=True)
    assert "httpx" not in runtime
    assert {"socket", "time", "trio.testing"} <= runtime


#: A codec that does I/O, reads the clock and logs, mostly without importing a forbidden module
#: (the reviewer's case, and more).
LEAKY = """
import datetime as dt
import sys
import warnings
from datetime import datetime
from pathlib import Path
from sys import stderr as err


class LeakyCodec:
    def decode(self, frame):
        now = dt.datetime.now()
        today = datetime.today()
        print("decoded", frame, now, today)
        sys.stderr.write("log line")
        err.write("log line")
        with open("/tmp/leak.log", "a") as file:
            file.write(str(frame))
        Path("/tmp/leak").read_text()
        warnings.warn("x")
        __import__("socket").create_connection(("127.0.0.1", 9))
        getattr(dt.datetime, "utcnow")()
        exec("import os")
        return read_wav_as_ulaw("x.wav")

    def exempt_elsewhere(self):
        return sys.byteorder, warnings.catch_warnings()  # neither is I/O
"""


def test_the_check_sees_io_that_needs_no_forbidden_import() -> None:
    assert forbidden_names(LEAKY, "voxbridge.providers.leaky") == {
        ".now",
        "datetime.datetime.now",
        ".today",
        "datetime.datetime.today",
        "print()",
        ".stderr",
        "sys.stderr",
        "sys.stderr.write",
        "open()",
        ".read_text",
        "warnings.warn",
        "__import__()",
        ".create_connection",
        "getattr(..., 'utcnow')",
        "exec()",
        "read_wav_as_ulaw (exempt from the check: not for codecs)",
    }


def test_an_exempt_function_is_skipped_only_in_its_own_module() -> None:
    source = "import wave\ndef read_wav_as_ulaw(path):\n    return wave.open(path)\n"
    assert forbidden_names(source, "voxbridge.audio") == set()
    assert forbidden_names(source, "voxbridge.providers.x") == {".open"}


def test_the_builtins_list_is_real() -> None:
    assert all(hasattr(builtins, name) for name in FORBIDDEN_BUILTINS)
