"""Tools an agent can call: what a tool is, and how one call of it runs.

A :class:`Tool` is a name, a description and a JSON-schema object of parameters -- what the model
is told -- and an async Python callable -- what runs. Embedders pass tools to ``run_call`` and
``VoxbridgeApp``; ``voxbridge serve --tools-module mymodule`` offers the ``TOOLS`` list of a
module. voxbridge declares them to the provider in its own protocol (OpenAI Realtime ``tools`` in
``session.update``, Ultravox client ``selectedTools``), whatever the provider.

:func:`run_tool` runs one call, inside the call's nursery, under the ``tool_timeout`` deadline.
Whatever happens -- the model names a tool that is not offered, writes arguments that are not a
JSON object, the tool raises or overruns its deadline -- the model gets a JSON result that says
so (``{"error": "..."}``) and the call goes on: a tool never ends a call. The exception of a tool
that failed is logged here with its traceback; the model is told only the exception type, since
its message may hold data the caller must not hear.

Two tools are built in (:data:`END_CALL`, :data:`TRANSFER_CALL`); the call implements them,
because they act on the call itself, and offers them only when they can work (Twilio REST
credentials; a transfer target).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import orjson
import trio

from .providers.events import ToolCall, ToolExchange

__all__ = [
    "BUILTIN_TOOLS",
    "END_CALL",
    "OUTCOMES",
    "TRANSFER_CALL",
    "Tool",
    "ToolContext",
    "run_tool",
]

log = logging.getLogger("voxbridge.tools")

#: The longest arguments (from the model) and result (from a tool) a call carries, in characters:
#: beyond, an error result. They go to the provider, the journal and every resumed session.
MAX_ARGUMENTS = 16_384
MAX_RESULT = 65_536

#: The ``outcome`` label of ``voxbridge_tool_calls_total``.
OUTCOMES = ("ok", "error", "timeout", "unknown_tool", "bad_arguments")


@attrs.frozen
class ToolContext:
    """What a tool may know about the call it serves: voxbridge's ``call_id``; the carrier's id of
    the call (``call_sid``: Twilio's ``CallSid``, or whatever the carrier names it) and of its
    media stream (``stream_sid``), ``None`` before its start; the agent's name; the stream's custom
    parameters."""

    call_id: str
    call_sid: str | None
    stream_sid: str | None
    agent: str
    custom_parameters: Mapping[str, str] = attrs.field(factory=dict)


#: A tool's implementation: the parsed arguments and the call's context in, a JSON-serialisable
#: result out (a ``str`` is passed to the model as is).
ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[object]]

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _tool_name(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$; Ultravox model tool names are the same set.
    if not (isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _NAME_CHARS):
        raise ValueError(f"tool name must be 1-64 characters of [A-Za-z0-9_-], got {value!r}")


def _object_schema(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, Mapping) and value.get("type") == "object"):
        raise ValueError(
            f"tool {instance.name!r}: parameters must be a JSON schema with type 'object'"
        )


@attrs.frozen
class Tool:
    """A function the model may call.

    Args:
        name: what the model calls it (1-64 of ``[A-Za-z0-9_-]``).
        description: what it does and when to use it, for the model.
        parameters: a JSON schema (``{"type": "object", "properties": {...}, "required": [...]}``).
        handler: ``async def handler(arguments: dict, context: ToolContext) -> result``. The
            result is JSON-serialisable (a ``str`` goes to the model unchanged). Raising, or
            overrunning ``tool_timeout``, gives the model an error result.

    Raises:
        ValueError: a bad name, or parameters that are not an object schema.
    """

    name: str = attrs.field(validator=_tool_name)
    description: str
    parameters: Mapping[str, Any] = attrs.field(
        factory=lambda: {"type": "object", "properties": {}}, validator=_object_schema
    )
    handler: ToolHandler | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def required(self) -> tuple[str, ...]:
        """The parameter names the schema marks required."""
        required = self.parameters.get("required", ())
        return tuple(name for name in required if isinstance(name, str))


END_CALL = Tool(
    "end_call",
    "Hang up the phone call. Say goodbye first; the call ends once the caller has heard it.",
    {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "why the call ends, in a few words"}
        },
    },
)

TRANSFER_CALL = Tool(
    "transfer_call",
    "Transfer the caller to a human colleague. Tell the caller first; the transfer happens "
    "once they have heard you.",
    {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "why the caller needs a human"}},
    },
)

#: The tools the call itself implements, by name.
BUILTIN_TOOLS: dict[str, Tool] = {END_CALL.name: END_CALL, TRANSFER_CALL.name: TRANSFER_CALL}


def _json(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def parse_arguments(call: ToolCall) -> dict[str, Any]:
    """The arguments of ``call`` as a dict.

    Raises:
        ValueError: they are not the JSON text of an object.
    """
    try:
        arguments = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        raise ValueError("arguments are not valid JSON") from None
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be a JSON object")
    return arguments


async def run_tool(
    call: ToolCall, tool: Tool | None, context: ToolContext, *, seconds: float
) -> ToolExchange:
    """Run one tool call within ``seconds`` and say what the model should hear.

    Never raises for the tool's sake (an exception or a timeout becomes an error result);
    a cancellation of the surrounding scope propagates.

    Args:
        call: the model's request.
        tool: the offered tool of that name, or ``None`` (the model named one not offered).
        context: the call the tool serves.
        seconds: how long the handler may take (``--tool-timeout``).

    Returns:
        The exchange: the call, the JSON result given to the model, and the outcome label.
    """

    def exchange(output: str, outcome: str) -> ToolExchange:
        return ToolExchange(call.call_id, call.name, call.arguments, output, outcome)

    if tool is None or tool.handler is None:
        call = ToolCall(call.call_id, call.name[:64], call.arguments[:MAX_ARGUMENTS])
        return exchange(_error(f"no tool named {call.name!r} is available"), "unknown_tool")
    if len(call.arguments) > MAX_ARGUMENTS:
        call = ToolCall(call.call_id, call.name, "{}")  # (not kept: it could be anything)
        return exchange(
            _error(f"arguments longer than {MAX_ARGUMENTS} characters"), "bad_arguments"
        )
    try:
        arguments = parse_arguments(call)
        missing = [name for name in tool.required if name not in arguments]
        if missing:
            raise ValueError(f"missing required argument(s): {', '.join(missing)}")
    except ValueError as exc:
        return exchange(_error(str(exc)), "bad_arguments")
    result: object = None
    with trio.move_on_after(seconds) as waited:
        try:
            result = await tool.handler(arguments, context)
        except Exception as exc:
            log.warning(
                "tool %s failed", tool.name, exc_info=True, extra={"call_id": context.call_id}
            )
            return exchange(_error(f"the tool failed ({type(exc).__name__})"), "error")
    if waited.cancelled_caught:
        log.warning(
            "tool %s did not answer within tool_timeout=%gs",
            tool.name,
            seconds,
            extra={"call_id": context.call_id},
        )
        return exchange(_error(f"the tool did not answer within {seconds:g} s"), "timeout")
    try:
        output = _json(result)
    except TypeError as exc:
        log.warning("tool %s returned a value that is not JSON: %s", tool.name, exc)
        return exchange(_error("the tool returned a result that is not JSON"), "error")
    if len(output) > MAX_RESULT:
        log.warning(
            "tool %s returned %d characters (at most %d)", tool.name, len(output), MAX_RESULT
        )
        return exchange(_error(f"the result was longer than {MAX_RESULT} characters"), "error")
    return exchange(output, "ok")
