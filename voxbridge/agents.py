"""Agents: who answers a call -- provider, model, voice, instructions, greeting, tools, transfer
target, key-press (DTMF) policy and answering-machine policy.

An :class:`AgentConfig` is a plain value. ``voxbridge serve`` builds the ``default`` agent from
its flags (:func:`default_agent`) and reads more from ``--agents FILE`` (:func:`load_agents`, a
TOML file); an embedder returns one from its ``configure(start)`` hook. A field left ``None``
takes the value of the settings (the flags).

The agents file holds one ``[agents.NAME]`` table per agent, every field optional::

    [agents.support]
    provider = "openai"                  # echo | openai | ultravox
    model = "gpt-realtime-2.1"
    voice = "marin"
    instructions_file = "support.txt"    # relative to the TOML file; or instructions = "..."
    greeting = "Thanks for calling Acme."   # "" = the caller speaks first
    tools = ["lookup_order", "end_call", "transfer_call"]   # omitted = every tool that can work
    transfer_to = "+15551230000"         # E.164 or a sip: URI
    dtmf = "forward"                     # forward | ignore
    on_machine = "leave_message"         # hangup | leave_message | continue
    numbers = ["+15557654321"]           # called numbers (Twilio's To) that pick this agent

``[agents.default]``, if present, is the agent of calls that no number or parameter names; its
fields override the flags' :func:`default_agent`. The file is read once, when the process starts:
every mistake in it is a :class:`~voxbridge.settings.SettingsError` whose message is one line
naming the file, the entry and the field (``agents.toml: [agents.support] dtmf: must be one of
forward, ignore; got 'beep'``), so ``voxbridge serve`` refuses to start instead of answering calls
with a half-configured agent.

``--tools-module`` names a Python module whose ``TOOLS`` are offered besides the built-ins
(:func:`load_tools`); :func:`check_agents` loads both as ``voxbridge serve`` does.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys
import tomllib
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import attrs

from .settings import PROVIDERS, Settings, SettingsError, is_transfer_target
from .tools import BUILTIN_TOOLS, TRANSFER_CALL, Tool

__all__ = [
    "DEFAULT_AGENT",
    "DTMF_POLICIES",
    "MACHINE_POLICIES",
    "AgentConfig",
    "Agents",
    "check_agents",
    "default_agent",
    "is_e164",
    "load_agents",
    "load_tools",
]

DEFAULT_AGENT = "default"
#: What a caller's key presses do: told to the model as a short user message, or only counted
#: and journalled.
DTMF_POLICIES = ("forward", "ignore")
#: What an outbound call answered by a machine does (Twilio's ``AnsweredBy``): hang up at once,
#: speak the greeting and hang up, or talk as to a person.
MACHINE_POLICIES = ("hangup", "leave_message", "continue")

DtmfPolicy = Literal["forward", "ignore"]
MachinePolicy = Literal["hangup", "leave_message", "continue"]


def _optional_choice(choices: tuple[str, ...]) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}; got {value!r}")

    return check


def _transfer_target(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (isinstance(value, str) and is_transfer_target(value)):
        raise ValueError(f"transfer_to must be an E.164 number or a sip: URI; got {value!r}")


@attrs.frozen(kw_only=True)
class AgentConfig:
    """One agent.

    Args:
        name: how calls and the ``agent`` parameter name it.
        provider: ``openai``, ``ultravox`` or ``echo``; ``None``: ``--provider``.
        model: the provider's model; ``None``: the provider's setting.
        voice: the agent's voice; ``None``: ``--voice``.
        instructions: the system instructions; ``None``: ``--instructions``.
        greeting: what the agent says first. ``None``: the provider's default (OpenAI waits for
            the caller; Ultravox greets); ``""``: the caller speaks first.
        tools: names of the tools offered (built-ins and the embedder's); ``None``: every tool
            that can work.
        transfer_to: where ``transfer_call`` sends the caller (E.164 or a ``sip:`` URI);
            ``None``: ``--transfer-to``.
        dtmf: ``forward`` (the default) or ``ignore``.
        on_machine: ``hangup``, ``leave_message`` or ``continue`` (the default), for a call
            answered by a machine.
        numbers: called numbers (E.164, Twilio's ``To``) that select this agent.

    Raises:
        ValueError: an unknown provider or policy, a transfer target that is neither E.164 nor
            a SIP URI, or ``leave_message`` without a greeting (nothing to leave).
    """

    name: str = DEFAULT_AGENT
    provider: str | None = attrs.field(default=None, validator=_optional_choice(PROVIDERS))
    model: str | None = None
    voice: str | None = None
    instructions: str | None = None
    greeting: str | None = None
    tools: tuple[str, ...] | None = None
    transfer_to: str | None = attrs.field(default=None, validator=_transfer_target)
    dtmf: DtmfPolicy = attrs.field(default="forward", validator=_optional_choice(DTMF_POLICIES))
    on_machine: MachinePolicy = attrs.field(
        default="continue", validator=_optional_choice(MACHINE_POLICIES)
    )
    numbers: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.on_machine == "leave_message" and not self.greeting:
            raise ValueError(
                "on_machine = leave_message needs a greeting: it is the message the agent leaves"
            )


def default_agent(settings: Settings) -> AgentConfig:
    """The agent of the flags: named ``default``, every field left ``None`` (or at its default),
    so ``--provider``, ``--voice``, ``--instructions``, ``--transfer-to`` ... apply.

    Args:
        settings: the process's settings, which the agent defers to.
    """
    return AgentConfig(name=DEFAULT_AGENT)


def is_e164(value: str) -> bool:
    """Whether ``value`` is an E.164 number: ``+`` and 8-15 ASCII digits (as Twilio's ``To``)."""
    return value.startswith("+") and is_transfer_target(value)


class Agents:
    """The agents of a process, by name and by called number.

    There is always a default agent (:attr:`default`): the ``default`` one given, else
    ``AgentConfig()``.

    Args:
        agents: the agents; names are unique, and no number selects two agents.

    Raises:
        ValueError: two agents of one name, or a number listed by two agents.
    """

    def __init__(self, agents: Iterable[AgentConfig] = ()) -> None:
        by_name: dict[str, AgentConfig] = {}
        by_number: dict[str, AgentConfig] = {}
        for agent in agents:
            if by_name.setdefault(agent.name, agent) is not agent:
                raise ValueError(f"two agents named {agent.name!r}")
            for number in agent.numbers:
                owner = by_number.setdefault(number, agent)
                if owner is not agent:
                    raise ValueError(
                        f"number {number!r} selects both agent {owner.name!r} and {agent.name!r}"
                    )
        default = by_name.pop(DEFAULT_AGENT, None)
        #: The agent of a call that nothing else selects.
        self.default: AgentConfig = AgentConfig() if default is None else default
        self._by_name = {DEFAULT_AGENT: self.default, **by_name}
        self._by_number = by_number

    @classmethod
    def single(cls, settings: Settings) -> Agents:
        """Only the flags' agent (:func:`default_agent`): a process without ``--agents``."""
        return cls([default_agent(settings)])

    @property
    def names(self) -> tuple[str, ...]:
        """Every agent's name: ``default`` first, then the others in the order given."""
        return tuple(self._by_name)

    def get(self, name: str) -> AgentConfig | None:
        """The agent called ``name``, or ``None``."""
        return self._by_name.get(name)

    def for_number(self, to: str) -> AgentConfig | None:
        """The agent whose ``numbers`` include ``to`` (the called number, Twilio's ``To``,
        compared exactly), or ``None``."""
        return self._by_number.get(to)

    def __iter__(self) -> Iterator[AgentConfig]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"Agents({list(self._by_name.values())!r})"


# --- the agents file ------------------------------------------------------------------------------

_AGENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STRING_FIELDS = (
    "provider",
    "model",
    "voice",
    "instructions",
    "instructions_file",
    "greeting",
    "transfer_to",
    "dtmf",
    "on_machine",
)
_LIST_FIELDS = ("tools", "numbers")
_FIELDS = (*_STRING_FIELDS, *_LIST_FIELDS)
#: Fields that mean nothing when empty (``greeting`` and ``instructions`` may be "").
_NOT_EMPTY = frozenset({"provider", "model", "voice", "instructions_file", "transfer_to"})


def _shown(value: object) -> str:
    """``value`` for a one-line message: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entry(name: str) -> str:
    label = name if _AGENT_NAME.fullmatch(name) else json.dumps(name)  # quoted, escaped, one line
    return f"[agents.{label}]"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _one_line(exc: BaseException) -> str:
    """``ValueError: the first line of its message``."""
    first = _first_line(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@attrs.frozen
class _AgentsFile:
    """Reads the entries of one agents file; every error names the file, entry and field."""

    where: str
    folder: Path
    known_tools: frozenset[str]
    settings: Settings

    def error(self, name: str | None, field: str | None, message: str) -> SettingsError:
        """``agents.toml: [agents.NAME] FIELD: message`` (the entry or the field may be absent)."""
        place = " ".join(part for part in (_entry(name) if name is not None else "", field) if part)
        return SettingsError(f"{self.where}: {place}: {message}")

    def agent(self, name: str, entry: object) -> AgentConfig:
        if not _AGENT_NAME.fullmatch(name):
            raise self.error(name, None, "an agent name is 1-64 characters of [A-Za-z0-9_-]")
        if not isinstance(entry, dict):
            raise self.error(name, None, f"must be a table of fields; got {_shown(entry)}")
        fields: dict[str, Any] = {}
        for field, value in entry.items():
            fields[field] = self.field(name, field, value)
        if "instructions_file" in fields:
            if "instructions" in fields:
                raise self.error(
                    name, "instructions_file", "give instructions or instructions_file, not both"
                )
            fields["instructions"] = self.read(name, fields.pop("instructions_file"))
        tools, target = fields.get("tools"), fields.get("transfer_to", self.settings.transfer_to)
        if tools is not None and TRANSFER_CALL.name in tools and target is None:
            raise self.error(
                name,
                "tools",
                f"{TRANSFER_CALL.name} needs a transfer target: set transfer_to here or "
                "--transfer-to / VOXBRIDGE_TRANSFER_TO",
            )
        base = default_agent(self.settings) if name == DEFAULT_AGENT else AgentConfig(name=name)
        try:
            return attrs.evolve(base, **fields)
        except ValueError as exc:  # a rule across fields (AgentConfig's own checks)
            raise self.error(name, None, str(exc)) from None

    def field(self, name: str, field: str, value: object) -> object:
        if field not in _FIELDS:
            raise self.error(name, field, f"unknown field (the fields are {', '.join(_FIELDS)})")
        if field in _LIST_FIELDS:
            if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
                raise self.error(name, field, f"must be a list of strings; got {_shown(value)}")
            return self.items(name, field, value)
        if not isinstance(value, str):
            raise self.error(name, field, f"must be a string; got {_shown(value)}")
        if field in _NOT_EMPTY and not value:
            raise self.error(name, field, "must not be empty")
        if field == "provider" and value not in PROVIDERS:
            raise self.error(
                name,
                field,
                f"unknown provider {_shown(value)} (the providers are {', '.join(PROVIDERS)})",
            )
        choices = {"dtmf": DTMF_POLICIES, "on_machine": MACHINE_POLICIES}.get(field)
        if choices is not None and value not in choices:
            raise self.error(
                name, field, f"must be one of {', '.join(choices)}; got {_shown(value)}"
            )
        if field == "transfer_to" and not is_transfer_target(value):
            raise self.error(
                name,
                field,
                f"must be an E.164 number (+15551230000) or a sip: URI; got {_shown(value)}",
            )
        return value

    def items(self, name: str, field: str, values: list[str]) -> tuple[str, ...]:
        for value in values:
            if field == "tools" and value not in self.known_tools:
                known = ", ".join(sorted(self.known_tools)) or "none"
                raise self.error(
                    name, field, f"unknown tool {_shown(value)} (the tools are: {known})"
                )
            if field == "numbers" and not is_e164(value):
                raise self.error(
                    name,
                    field,
                    f"must be E.164 numbers (+15557654321); got {_shown(value)}",
                )
        return tuple(values)

    def read(self, name: str, instructions_file: str) -> str:
        file = self.folder / instructions_file  # an absolute path stays as it is
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        raise self.error(name, "instructions_file", f"cannot read {os.fspath(file)!r}: {problem}")


def load_agents(
    path: str | os.PathLike[str], *, known_tools: Collection[str], settings: Settings
) -> Agents:
    """Read the agents file at ``path`` (TOML; the shape is in the module docstring).

    Args:
        path: the file (``--agents``). ``instructions_file`` values are relative to its folder.
        known_tools: the names an agent's ``tools`` may list: the built-ins and the
            ``--tools-module`` tools.
        settings: the flags: the ``default`` entry overrides :func:`default_agent`; an agent
            that lists ``transfer_call`` needs a ``transfer_to`` or ``--transfer-to``.

    Returns:
        The agents: the file's ``default`` entry, or the flags' agent, and the others.

    Raises:
        SettingsError: one line naming the file, the entry and the field: the file cannot be
            read or is not TOML (with its line and column), not a table of tables, an unknown
            field, a wrong type, a bad choice or provider, an unknown tool, a bad transfer
            target or number, a number listed by two agents, a bad agent name, an
            ``instructions_file`` that cannot be read or is given with ``instructions``.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read the agents file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:  # "Invalid value (at line 3, column 7)"
        raise SettingsError(f"{where}: not valid TOML: {_first_line(exc)}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not valid TOML: not UTF-8 text") from None
    reader = _AgentsFile(where, Path(path).parent, frozenset(known_tools), settings)
    for key in document:
        if key != "agents":
            raise reader.error(None, key, "unknown key (an agents file holds [agents.NAME] tables)")
    entries = document.get("agents", {})
    if not isinstance(entries, dict):
        raise reader.error(
            None, "agents", f"must be a table of [agents.NAME] tables; got {_shown(entries)}"
        )
    agents: list[AgentConfig] = []
    owners: dict[str, str] = {}
    for name, entry in entries.items():
        agent = reader.agent(name, entry)
        for number in agent.numbers:
            owner = owners.setdefault(number, name)
            if owner != name:
                raise reader.error(name, "numbers", f"{number!r} already selects {_entry(owner)}")
        agents.append(agent)
    if DEFAULT_AGENT not in entries:
        agents.insert(0, default_agent(settings))
    return Agents(agents)


# --- the tools module -----------------------------------------------------------------------------

_TOOLS_MODULE = "--tools-module / VOXBRIDGE_TOOLS_MODULE"


def _import(name: str, where: str) -> ModuleType:
    if name.endswith(".py") or os.sep in name or "/" in name:
        return _import_file(Path(name), where)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise SettingsError(f"{where}: no such module (is it on sys.path?)") from None
        raise SettingsError(f"{where}: importing it failed: {_one_line(exc)}") from exc
    except Exception as exc:
        raise SettingsError(f"{where}: importing it failed: {_one_line(exc)}") from exc


def _import_file(file: Path, where: str) -> ModuleType:
    if not file.is_file():
        raise SettingsError(f"{where}: no such file")
    module_name = file.stem
    existing = sys.modules.get(module_name)
    if existing is not None:
        loaded = getattr(existing, "__file__", None)
        if loaded is not None and Path(loaded).resolve() == file.resolve():
            return existing  # loaded before (check_agents, then serve): the same tools
        raise SettingsError(
            f"{where}: its name clashes with the module {module_name!r} already imported; "
            "rename the file"
        )
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise SettingsError(f"{where}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import does: attrs, dataclasses and pickling look
    # the module up by name.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise SettingsError(f"{where}: importing it failed: {_one_line(exc)}") from exc
    return module


def load_tools(module_name: str) -> list[Tool]:
    """The ``TOOLS`` of the module ``--tools-module`` names.

    Args:
        module_name: a module on ``sys.path`` (``mypackage.tools``), or the path of a ``.py``
            file (imported as a module named after the file).

    Returns:
        The tools, in the module's order.

    Raises:
        SettingsError: one line: the module cannot be found or fails to import (its exception's
            type and first line; the exception is chained), has no ``TOOLS`` sequence, an
            item is not a :class:`~voxbridge.tools.Tool` or has no handler, two tools share a
            name, or a tool takes a built-in's name (``end_call``, ``transfer_call``).
    """
    where = f"{_TOOLS_MODULE}: {module_name!r}"
    module = _import(module_name, where)
    tools = getattr(module, "TOOLS", None)
    if tools is None:
        raise SettingsError(f"{where}: the module has no TOOLS (a list of voxbridge.Tool)")
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise SettingsError(
            f"{where}: TOOLS must be a list of voxbridge.Tool; got {type(tools).__name__}"
        )
    seen: dict[str, int] = {}
    for index, tool in enumerate(tools):
        if not isinstance(tool, Tool):
            raise SettingsError(
                f"{where}: TOOLS[{index}] is not a voxbridge.Tool; got {type(tool).__name__}"
            )
        if tool.handler is None or not callable(tool.handler):
            raise SettingsError(f"{where}: TOOLS[{index}] {tool.name!r} has no handler")
        if tool.name in BUILTIN_TOOLS:
            raise SettingsError(
                f"{where}: TOOLS[{index}] {tool.name!r} takes the name of a built-in tool "
                f"({', '.join(BUILTIN_TOOLS)})"
            )
        first = seen.setdefault(tool.name, index)
        if first != index:
            raise SettingsError(
                f"{where}: TOOLS[{index}] {tool.name!r}: TOOLS[{first}] has the same name"
            )
    return list(tools)


def check_agents(settings: Settings) -> tuple[Agents, list[Tool]]:
    """Load ``--tools-module`` and ``--agents`` as ``voxbridge serve`` does, before it listens.

    Returns:
        The agents (:meth:`Agents.single` without ``--agents``) and the module's tools (``[]``
        without ``--tools-module``; the built-ins are not included).

    Raises:
        SettingsError: one line (see :func:`load_tools` and :func:`load_agents`).
    """
    tools = load_tools(settings.tools_module) if settings.tools_module else []
    if settings.agents is None:
        return Agents.single(settings), tools
    known = [*BUILTIN_TOOLS, *(tool.name for tool in tools)]
    return load_agents(settings.agents, known_tools=known, settings=settings), tools
