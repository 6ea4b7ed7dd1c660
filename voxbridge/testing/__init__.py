"""Fakes that speak the real protocols over real (or in-memory) WebSockets.

Shipped with voxbridge so users can test their deployments and embeddings the way voxbridge tests
itself: an OpenAI Realtime fake with fault knobs (and ``FakeEchoAgent``, the echo agent's test
double built on it), an Ultravox fake (REST + WebSocket), a carrier simulator (any registered
carrier's wire: :func:`wire_for`; Twilio's by default), and a fault-injecting stream wrapper.
"""

from importlib import import_module

from ..providers.registry import PROVIDERS
from .carrier import CallResult, CarrierSimulator, TwilioWire, simulate_call, wire_for
from .echo_agent import AgentSession, FakeEchoAgent
from .fake_openai import FakeOpenAIRealtime
from .fake_twilio import FakeCall, FakeTwilio, route_to
from .fake_ultravox import FakeUltravox, Utterance
from .faults import FaultStream
from .proxy import FaultProxy, ProxiedConnection

__all__ = [
    "AgentSession",
    "CallResult",
    "CarrierSimulator",
    "FakeCall",
    "FakeEchoAgent",
    "FakeOpenAIRealtime",
    "FakeTwilio",
    "FakeUltravox",
    "FaultProxy",
    "FaultStream",
    "ProxiedConnection",
    "TwilioWire",
    "Utterance",
    "fake_for",
    "route_to",
    "simulate_call",
    "wire_for",
]


def fake_for(name: str) -> type:
    """The fake of the registered provider ``name``: the class its spec names
    (``ProviderSpec.fake``, ``"module:Class"``), imported.

    Every fake is a server: ``await nursery.start(fake.serve)`` returns the URL to pass as
    ``--provider-url``.

    Raises:
        KeyError: no provider of that name is registered.
    """
    module, _, attribute = PROVIDERS[name].fake.partition(":")
    fake: type = getattr(import_module(module), attribute)
    return fake
