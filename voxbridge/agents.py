"""Agents: who answers a call -- provider, model, voice, instructions, greeting, tools, transfer
target, key-press (DTMF) policy and answering-machine policy.

An :class:`AgentConfig` is a plain value. ``voxbridge serve`` builds the ``default`` agent from
its flags (:func:`default_agent`) and reads more from ``--agents FILE`` (:func:`load_agents`, a
TOML file); an embedder returns one from its ``configure(start)`` hook. A field left ``None``
takes the value of the settings (the flags).
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = [
    "DEFAULT_AGENT",
    "DTMF_POLICIES",
    "MACHINE_POLICIES",
    "AgentConfig",
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
    """

    name: str = DEFAULT_AGENT
    provider: str | None = None
    model: str | None = None
    voice: str | None = None
    instructions: str | None = None
    greeting: str | None = None
    tools: tuple[str, ...] | None = None
    transfer_to: str | None = None
    dtmf: DtmfPolicy = "forward"
    on_machine: MachinePolicy = "continue"
    numbers: tuple[str, ...] = ()
