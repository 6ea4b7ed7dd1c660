"""The agents file (``--agents``), the tools module (``--tools-module``) and :class:`Agents`.

Files are real files in ``tmp_path``. Every error is checked as the exact one-line message an
operator sees (``voxbridge serve`` prints a SettingsError as ``voxbridge: <message>`` and exits 2).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voxbridge.agents import (
    AgentConfig,
    Agents,
    check_agents,
    default_agent,
    is_e164,
    load_agents,
    load_tools,
)
from voxbridge.settings import Settings, SettingsError
from voxbridge.tools import BUILTIN_TOOLS, Tool

KNOWN = ("end_call", "transfer_call", "lookup_order")

GOOD = """
[agents.support]
provider = "openai"
model = "gpt-realtime-2.1"
voice = "marin"
instructions_file = "prompts/support.txt"
greeting = "Thanks for calling Acme."
tools = ["lookup_order", "end_call", "transfer_call"]
transfer_to = "+15551230000"
dtmf = "forward"
on_machine = "leave_message"
numbers = ["+15557654321", "+15557654322"]

[agents.sales]
provider = "ultravox"
instructions = "Sell."
greeting = ""
transfer_to = "sip:sales@pbx.example.com"
dtmf = "ignore"
on_machine = "hangup"
numbers = ["+15550001111"]

[agents.bare]
"""


def write(folder: Path, text: str, name: str = "agents.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, settings: Settings | None = None) -> Agents:
    return load_agents(path, known_tools=KNOWN, settings=settings or Settings())


def test_a_good_file_gives_every_agent_by_name_and_by_number(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "support.txt").write_text("  Help with orders.\n", encoding="utf-8")
    agents = load(write(tmp_path, GOOD))

    support = AgentConfig(
        name="support",
        provider="openai",
        model="gpt-realtime-2.1",
        voice="marin",
        instructions="Help with orders.",  # read relative to the TOML file, stripped
        greeting="Thanks for calling Acme.",
        tools=("lookup_order", "end_call", "transfer_call"),
        transfer_to="+15551230000",
        dtmf="forward",
        on_machine="leave_message",
        numbers=("+15557654321", "+15557654322"),
    )
    sales = AgentConfig(
        name="sales",
        provider="ultravox",
        instructions="Sell.",
        greeting="",
        transfer_to="sip:sales@pbx.example.com",
        dtmf="ignore",
        on_machine="hangup",
        numbers=("+15550001111",),
    )
    assert agents.get("support") == support
    assert agents.get("sales") == sales
    assert agents.get("bare") == AgentConfig(name="bare")  # every field left to the flags
    assert agents.get("nobody") is None
    assert agents.names == ("default", "support", "sales", "bare")
    assert list(agents) == [AgentConfig(), support, sales, AgentConfig(name="bare")]
    assert len(agents) == 4 and "sales" in agents and "nobody" not in agents
    assert agents.default == default_agent(Settings()) == AgentConfig(name="default")
    assert agents.get("default") is agents.default
    assert agents.for_number("+15557654322") == support
    assert agents.for_number("+15550001111") == sales
    assert agents.for_number("+15559999999") is None


def test_the_default_entry_overrides_the_flags_agent(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agents.support]\nvoice = "marin"\n\n'
        '[agents.default]\nvoice = "cedar"\ngreeting = ""\nnumbers = ["+15550002222"]\n',
    )
    agents = load(path)
    expected = AgentConfig(name="default", voice="cedar", greeting="", numbers=("+15550002222",))
    assert agents.default == expected
    assert agents.names == ("default", "support")
    assert agents.for_number("+15550002222") == expected


def test_no_file_and_an_empty_file_give_the_flags_agent_only(tmp_path: Path) -> None:
    single = Agents.single(Settings())
    assert (single.names, single.default) == (("default",), AgentConfig())
    assert load(write(tmp_path, "")).names == ("default",)
    assert load(write(tmp_path, "[agents]\n")).names == ("default",)


def test_transfer_call_is_accepted_with_a_target_in_the_agent_or_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\ntools = ["transfer_call"]\n')
    agents = load(path, Settings(transfer_to="+15551230000"))
    assert agents.get("a") == AgentConfig(name="a", tools=("transfer_call",))


FIELDS = (
    "provider, model, voice, instructions, instructions_file, greeting, transfer_to, dtmf, "
    "on_machine, tools, numbers"
)

BAD = [
    pytest.param(
        '[agents.support]\ndtmf = "beep"\n',
        "[agents.support] dtmf: must be one of forward, ignore; got 'beep'",
        id="bad-dtmf",
    ),
    pytest.param(
        '[agents.support]\non_machine = "voicemail"\n',
        "[agents.support] on_machine: must be one of hangup, leave_message, continue; "
        "got 'voicemail'",
        id="bad-on-machine",
    ),
    pytest.param(
        '[agents.support]\ncolour = "red"\n',
        f"[agents.support] colour: unknown field (the fields are {FIELDS})",
        id="unknown-field",
    ),
    pytest.param(
        "[agents.support]\nvoice = 3\n",
        "[agents.support] voice: must be a string; got 3",
        id="wrong-type-string",
    ),
    pytest.param(
        '[agents.support]\ntools = "end_call"\n',
        "[agents.support] tools: must be a list of strings; got 'end_call'",
        id="wrong-type-list",
    ),
    pytest.param(
        "[agents.support]\nnumbers = [15557654321]\n",
        "[agents.support] numbers: must be a list of strings; got [15557654321]",
        id="wrong-type-list-item",
    ),
    pytest.param(
        f'[agents.support]\ninstructions = ["{"x" * 80}"]\n',
        f"[agents.support] instructions: must be a string; got ['{'x' * 55}...",
        id="a-long-value-is-cut",
    ),
    pytest.param(
        '[agents.support]\nmodel = ""\n',
        "[agents.support] model: must not be empty",
        id="empty-model",
    ),
    pytest.param(
        '[agents.support]\nprovider = "vapi"\n',
        "[agents.support] provider: unknown provider 'vapi' (the providers are echo, openai, "
        "ultravox, gpt-live, deepgram, gemini)",
        id="unknown-provider",
    ),
    pytest.param(
        '[agents.support]\ntools = ["lookup_order", "send_email"]\n',
        "[agents.support] tools: unknown tool 'send_email' (the tools are: end_call, "
        "lookup_order, transfer_call)",
        id="unknown-tool",
    ),
    pytest.param(
        '[agents.support]\ntools = ["transfer_call"]\n',
        "[agents.support] tools: transfer_call needs a transfer target: set transfer_to here or "
        "--transfer-to / VOXBRIDGE_TRANSFER_TO",
        id="transfer-without-target",
    ),
    pytest.param(
        '[agents.support]\ntransfer_to = "555-1234"\n',
        "[agents.support] transfer_to: must be an E.164 number (+15551230000) or a sip: URI; "
        "got '555-1234'",
        id="bad-transfer-target",
    ),
    pytest.param(
        '[agents.support]\nnumbers = ["+15557654321", "+1 555 765 4322"]\n',
        "[agents.support] numbers: must be E.164 numbers (+15557654321); got '+1 555 765 4322'",
        id="bad-number",
    ),
    pytest.param(
        '[agents.support]\nnumbers = ["+15557654321"]\n\n'
        '[agents.sales]\nnumbers = ["+15550001111", "+15557654321"]\n',
        "[agents.sales] numbers: '+15557654321' already selects [agents.support]",
        id="number-in-two-agents",
    ),
    pytest.param(
        '[agents."front desk"]\nvoice = "marin"\n',
        '[agents."front desk"]: an agent name is 1-64 characters of [A-Za-z0-9_-]',
        id="bad-name",
    ),
    pytest.param(
        f'[agents.{"a" * 65}]\nvoice = "marin"\n',
        f'[agents."{"a" * 65}"]: an agent name is 1-64 characters of [A-Za-z0-9_-]',
        id="long-name",
    ),
    pytest.param(
        '[agents."new\\nline"]\n',
        '[agents."new\\nline"]: an agent name is 1-64 characters of [A-Za-z0-9_-]',
        id="name-with-a-newline-stays-one-line",
    ),
    pytest.param(
        '[agents.support]\ninstructions = "Help."\ninstructions_file = "support.txt"\n',
        "[agents.support] instructions_file: give instructions or instructions_file, not both",
        id="both-instructions",
    ),
    pytest.param(
        "agents = 3\n",
        "agents: must be a table of [agents.NAME] tables; got 3",
        id="agents-not-a-table",
    ),
    pytest.param(
        '[agents]\nsupport = "marin"\n',
        "[agents.support]: must be a table of fields; got 'marin'",
        id="entry-not-a-table",
    ),
    pytest.param(
        '[agent.support]\nvoice = "marin"\n',
        "agent: unknown key (an agents file holds [agents.NAME] tables)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        '[agents.support]\nvoice = "marin"\ndtmf = forward\n',
        "not valid TOML: Invalid value (at line 3, column 8)",
        id="toml-syntax-error",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_file_is_one_line_naming_the_file_the_entry_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as error:
        load(path)
    assert str(error.value) == f"{path}: {message}"
    assert "\n" not in str(error.value)


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(SettingsError) as error:
        load(missing)
    assert str(error.value) == f"{missing}: cannot read the agents file: No such file or directory"
    with pytest.raises(SettingsError) as error:
        load(tmp_path)
    assert str(error.value) == f"{tmp_path}: cannot read the agents file: Is a directory"
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[agents.support]\ngreeting = "Grüß Gott"\n'.encode("latin-1"))
    with pytest.raises(SettingsError) as error:
        load(latin1)
    assert str(error.value) == f"{latin1}: not valid TOML: not UTF-8 text"


def test_an_instructions_file_that_cannot_be_read_says_which(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.support]\ninstructions_file = "prompts/missing.txt"\n')
    with pytest.raises(SettingsError) as error:
        load(path)
    assert str(error.value) == (
        f"{path}: [agents.support] instructions_file: cannot read "
        f"'{tmp_path / 'prompts' / 'missing.txt'}': No such file or directory"
    )
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    path = write(tmp_path, f'[agents.sales]\ninstructions_file = "{tmp_path / "binary.txt"}"\n')
    with pytest.raises(SettingsError) as error:  # an absolute path is taken as it is
        load(path)
    assert str(error.value) == (
        f"{path}: [agents.sales] instructions_file: cannot read "
        f"'{tmp_path / 'binary.txt'}': not UTF-8 text"
    )


def test_agents_refuses_two_of_a_name_or_a_number_twice() -> None:
    with pytest.raises(ValueError, match="two agents named 'a'"):
        Agents([AgentConfig(name="a"), AgentConfig(name="a")])
    with pytest.raises(ValueError, match="number '\\+15550001111' selects both agent 'a' and 'b'"):
        Agents(
            [
                AgentConfig(name="a", numbers=("+15550001111",)),
                AgentConfig(name="b", numbers=("+15550001111",)),
            ]
        )


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("+15557654321", True),
        ("+4930123456", True),
        ("+12345678", True),  # 8 digits
        ("+1234567", False),
        ("+1234567890123456", False),  # 16 digits
        ("15557654321", False),
        ("+1555765432a", False),
        ("+" + "".join(chr(0xFF10 + int(d)) for d in "15557654321"), False),  # full-width
        ("sip:alice@example.com", False),
    ],
)
def test_is_e164(number: str, valid: bool) -> None:
    assert is_e164(number) is valid


# --- the tools module ------------------------------------------------------------------------------

MODULE = """
from voxbridge.tools import Tool

async def lookup(arguments, context):
    return {"status": "shipped", "order": arguments["order"]}

TOOLS = [
    Tool(
        "lookup_order",
        "Look up an order by its number.",
        {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        lookup,
    ),
    Tool("opening_hours", "When the shop is open.", handler=lookup),
]
"""


@pytest.fixture
def forget_modules() -> Iterator[None]:
    """Modules the test imports are removed afterwards, so the next test imports its own."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.usefixtures("forget_modules")
def test_tools_from_a_file_and_from_a_module_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(tmp_path, MODULE, "acme_tools.py")
    tools = load_tools(str(file))
    assert [(tool.name, tool.required) for tool in tools] == [
        ("lookup_order", ("order",)),
        ("opening_hours", ()),
    ]
    assert all(isinstance(tool, Tool) and tool.handler is not None for tool in tools)
    assert load_tools(str(file)) == tools  # loaded once: check_agents, then serve

    package = tmp_path / "site" / "acme"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write(package, MODULE, "voice_tools.py")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert [tool.name for tool in load_tools("acme.voice_tools")] == [
        "lookup_order",
        "opening_hours",
    ]


BAD_MODULES = [
    pytest.param("X = 1\n", "the module has no TOOLS (a list of voxbridge.Tool)", id="no-tools"),
    pytest.param(
        "TOOLS = 'lookup_order'\n", "TOOLS must be a list of voxbridge.Tool; got str", id="a-str"
    ),
    pytest.param(
        "TOOLS = [{'name': 'lookup_order'}]\n",
        "TOOLS[0] is not a voxbridge.Tool; got dict",
        id="not-a-tool",
    ),
    pytest.param(
        "from voxbridge.tools import Tool\nTOOLS = [Tool('lookup_order', 'Look up.')]\n",
        "TOOLS[0] 'lookup_order' has no handler",
        id="no-handler",
    ),
    pytest.param(
        "from voxbridge.tools import Tool\n"
        "async def h(arguments, context):\n    return 'ok'\n"
        "TOOLS = [Tool('end_call', 'Hang up my way.', handler=h)]\n",
        "TOOLS[0] 'end_call' takes the name of a built-in tool (end_call, transfer_call)",
        id="shadows-a-built-in",
    ),
    pytest.param(
        "from voxbridge.tools import Tool\n"
        "async def h(arguments, context):\n    return 'ok'\n"
        "TOOLS = [Tool('a', 'A.', handler=h), Tool('b', 'B.', handler=h), "
        "Tool('a', 'A again.', handler=h)]\n",
        "TOOLS[2] 'a': TOOLS[0] has the same name",
        id="a-name-twice",
    ),
    pytest.param(
        "raise RuntimeError('no database\\nsecond line')\n",
        "importing it failed: RuntimeError: no database",
        id="raises-on-import",
    ),
    pytest.param(
        "import no_such_dependency_xyz\n",
        "importing it failed: ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
        id="a-missing-dependency",
    ),
    pytest.param(
        "TOOLS = [\n",
        "importing it failed: SyntaxError: '[' was never closed (bad_tools.py, line 1)",
        id="syntax",
    ),
]


@pytest.mark.usefixtures("forget_modules")
@pytest.mark.parametrize(("source", "message"), BAD_MODULES)
def test_a_bad_tools_module_is_one_line(tmp_path: Path, source: str, message: str) -> None:
    file = write(tmp_path, source, "bad_tools.py")
    with pytest.raises(SettingsError) as error:
        load_tools(str(file))
    assert str(error.value) == f"--tools-module / VOXBRIDGE_TOOLS_MODULE: '{file}': {message}"
    if "importing it failed" in message:
        assert "bad_tools" not in sys.modules  # a failed import leaves nothing behind


@pytest.mark.usefixtures("forget_modules")
def test_a_tools_module_that_cannot_be_found_says_so(tmp_path: Path) -> None:
    prefix = "--tools-module / VOXBRIDGE_TOOLS_MODULE"
    with pytest.raises(SettingsError) as error:
        load_tools("no_such_tools_module.sub")
    assert str(error.value) == (
        f"{prefix}: 'no_such_tools_module.sub': no such module (is it on sys.path?)"
    )
    missing = tmp_path / "missing_tools.py"
    with pytest.raises(SettingsError) as error:
        load_tools(str(missing))
    assert str(error.value) == f"{prefix}: '{missing}': no such file"
    clash = write(tmp_path, MODULE, "json.py")
    with pytest.raises(SettingsError) as error:
        load_tools(str(clash))
    assert str(error.value) == (
        f"{prefix}: '{clash}': its name clashes with the module 'json' already imported; "
        "rename the file"
    )


# --- check_agents: what voxbridge serve runs before it listens -----------------------------------


@pytest.mark.usefixtures("forget_modules")
def test_check_agents_loads_the_tools_module_then_the_agents_file(tmp_path: Path) -> None:
    tools_file = write(tmp_path, MODULE, "shop_tools.py")
    agents_file = write(
        tmp_path, '[agents.shop]\ntools = ["lookup_order", "opening_hours", "end_call"]\n'
    )
    agents, tools = check_agents(Settings(agents=str(agents_file), tools_module=str(tools_file)))
    assert [tool.name for tool in tools] == ["lookup_order", "opening_hours"]
    assert agents.get("shop") == AgentConfig(
        name="shop", tools=("lookup_order", "opening_hours", "end_call")
    )
    assert set(BUILTIN_TOOLS) == {"end_call", "transfer_call"}

    agents, tools = check_agents(Settings())
    assert (agents.names, tools) == (("default",), [])


def test_check_agents_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    # What `voxbridge serve --agents bad.toml` prints (after "voxbridge: ") before exiting 2.
    bad = write(tmp_path, '[agents.support]\ndtmf = "beep"\n', "bad.toml")
    with pytest.raises(SettingsError) as error:
        check_agents(Settings(agents=str(bad)))
    assert str(error.value) == (
        f"{bad}: [agents.support] dtmf: must be one of forward, ignore; got 'beep'"
    )
    # Without --tools-module, a module tool is unknown.
    shop = write(tmp_path, '[agents.shop]\ntools = ["lookup_order"]\n', "shop.toml")
    with pytest.raises(SettingsError) as error:
        check_agents(Settings(agents=str(shop)))
    assert str(error.value) == (
        f"{shop}: [agents.shop] tools: unknown tool 'lookup_order' (the tools are: end_call, "
        "transfer_call)"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"transfer_to": "555-1234"}, "transfer_to must be an E.164 number or a sip: URI"),
        ({"provider": "watson"}, "provider must be one of echo, openai, ultravox, gpt-live"),
        ({"dtmf": "beep"}, "dtmf must be one of forward, ignore"),
        ({"on_machine": "leave_message"}, "leave_message needs a greeting"),
        ({"on_machine": "leave_message", "greeting": ""}, "leave_message needs a greeting"),
    ],
)
def test_an_agent_config_refuses_what_cannot_work(fields: dict[str, Any], message: str) -> None:
    """Embedders build AgentConfig in code: the same rules as the file, as ValueError."""
    with pytest.raises(ValueError, match=message):
        AgentConfig(**fields)


def test_leave_message_without_a_greeting_is_refused_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[agents.vm]\non_machine = "leave_message"\n', encoding="utf-8")
    with pytest.raises(SettingsError) as refused:
        load_agents(path, known_tools=(), settings=Settings())
    assert str(refused.value) == (
        f"{path}: [agents.vm]: on_machine = leave_message needs a greeting: it is the message "
        "the agent leaves"
    )


def test_serve_refuses_an_agent_whose_provider_has_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxbridge.cli import main

    monkeypatch.delenv("ULTRAVOX_API_KEY", raising=False)
    monkeypatch.delenv("VOXBRIDGE_ULTRAVOX_API_KEY", raising=False)
    path = tmp_path / "agents.toml"
    path.write_text('[agents.uv]\nprovider = "ultravox"\n', encoding="utf-8")
    assert main(["serve", "--agents", str(path)]) == 2
    assert capsys.readouterr().out.strip().splitlines() == [
        "voxbridge: provider ultravox needs ULTRAVOX_API_KEY"
    ]
