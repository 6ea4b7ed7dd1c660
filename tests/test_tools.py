"""``voxbridge.tools``: what a tool is, and one call of it (``run_tool``) on the autojump clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from voxbridge.providers.events import ToolCall
from voxbridge.tools import BUILTIN_TOOLS, Tool, ToolContext, run_tool

CONTEXT = ToolContext("c1", "CA1", "MZ1", "default", {})


def tool(handler: Any, **schema: Any) -> Tool:
    parameters = {"type": "object", "properties": {"x": {"type": "integer"}}, **schema}
    return Tool("t", "a test tool", parameters, handler)


async def answer(arguments: dict[str, Any], context: ToolContext) -> object:
    return {"x": arguments.get("x"), "call": context.call_sid}


@pytest.mark.parametrize(
    ("arguments", "required", "output", "outcome"),
    [
        ('{"x": 1}', [], '{"x":1,"call":"CA1"}', "ok"),
        ("", [], '{"x":null,"call":"CA1"}', "ok"),  # no arguments: an empty object
        ("[1]", [], '{"error":"arguments must be a JSON object"}', "bad_arguments"),
        ("{x", [], '{"error":"arguments are not valid JSON"}', "bad_arguments"),
        ("{}", ["x"], '{"error":"missing required argument(s): x"}', "bad_arguments"),
    ],
)
async def test_arguments_are_checked_before_the_handler_runs(
    arguments: str, required: list[str], output: str, outcome: str
) -> None:
    exchange = await run_tool(
        ToolCall("id1", "t", arguments), tool(answer, required=required), CONTEXT, seconds=1
    )
    assert (exchange.output, exchange.outcome) == (output, outcome)
    assert (exchange.call_id, exchange.name, exchange.arguments) == ("id1", "t", arguments)


async def test_a_tool_not_offered_is_an_unknown_tool_result() -> None:
    exchange = await run_tool(ToolCall("id1", "rm_rf", "{}"), None, CONTEXT, seconds=1)
    assert exchange.outcome == "unknown_tool"
    assert exchange.output == '{"error":"no tool named \'rm_rf\' is available"}'


async def test_a_failing_tool_reports_its_exception_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(arguments: dict[str, Any], context: ToolContext) -> object:
        raise KeyError("secret-account-number")

    exchange = await run_tool(ToolCall("id1", "t", "{}"), tool(broken), CONTEXT, seconds=1)
    assert (exchange.output, exchange.outcome) == (
        '{"error":"the tool failed (KeyError)"}',
        "error",
    )
    assert "secret-account-number" in caplog.text  # in the server's log, with the traceback


async def test_a_result_that_is_not_json_is_an_error() -> None:
    async def odd(arguments: dict[str, Any], context: ToolContext) -> object:
        return {1, 2}

    exchange = await run_tool(ToolCall("id1", "t", "{}"), tool(odd), CONTEXT, seconds=1)
    assert exchange.outcome == "error"
    assert exchange.output == '{"error":"the tool returned a result that is not JSON"}'


async def test_a_string_result_goes_to_the_model_unchanged() -> None:
    async def text(arguments: dict[str, Any], context: ToolContext) -> object:
        return "It is sunny."

    exchange = await run_tool(ToolCall("id1", "t", "{}"), tool(text), CONTEXT, seconds=1)
    assert (exchange.output, exchange.outcome) == ("It is sunny.", "ok")
    assert exchange.text == "t({}) -> It is sunny."


async def test_a_slow_tool_is_cancelled_at_exactly_its_deadline(autojump_clock: Any) -> None:
    ended: list[float] = []

    async def slow(arguments: dict[str, Any], context: ToolContext) -> object:
        try:
            await trio.sleep(60)
        finally:
            ended.append(trio.current_time())
        return None

    start = trio.current_time()
    exchange = await run_tool(ToolCall("id1", "t", "{}"), tool(slow), CONTEXT, seconds=2.5)
    assert ended == [start + 2.5]
    assert exchange.outcome == "timeout"
    assert exchange.output == '{"error":"the tool did not answer within 2.5 s"}'


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "dots.not.allowed"])
def test_tool_names_follow_the_providers_rules(name: str) -> None:
    with pytest.raises(ValueError, match="tool name"):
        Tool(name, "bad")


def test_parameters_must_be_an_object_schema() -> None:
    with pytest.raises(ValueError, match="type 'object'"):
        Tool("t", "bad", {"type": "string"})


def test_the_built_in_tools_are_end_call_and_transfer_call() -> None:
    assert set(BUILTIN_TOOLS) == {"end_call", "transfer_call"}
    assert all(tool.handler is None for tool in BUILTIN_TOOLS.values())  # the call runs them


async def test_oversized_arguments_and_results_are_error_results() -> None:
    from voxbridge.tools import MAX_ARGUMENTS, MAX_RESULT

    async def huge(arguments: dict[str, Any], context: ToolContext) -> object:
        return "x" * (MAX_RESULT + 1)

    long_arguments = '{"x": "' + "y" * MAX_ARGUMENTS + '"}'
    too_long = await run_tool(
        ToolCall("id1", "t", long_arguments), tool(answer), CONTEXT, seconds=1
    )
    assert too_long.outcome == "bad_arguments"
    assert too_long.arguments == "{}"  # not kept: the journal and resumes carry the exchange
    result = await run_tool(ToolCall("id2", "t", "{}"), tool(huge), CONTEXT, seconds=1)
    assert result.outcome == "error"
    assert result.output == f'{{"error":"the result was longer than {MAX_RESULT} characters"}}'
    unknown = await run_tool(ToolCall("id3", "n" * 1000, "{}"), None, CONTEXT, seconds=1)
    assert unknown.name == "n" * 64  # a made-up name is not carried whole
