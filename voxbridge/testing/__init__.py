"""Fakes that speak the real protocols over real (or in-memory) WebSockets.

Shipped with voxbridge so users can test their deployments and embeddings the way voxbridge tests
itself: an OpenAI Realtime fake with fault knobs (and the echo agent built on it), an Ultravox fake
(REST + WebSocket), a Twilio carrier simulator, and a fault-injecting stream wrapper.
"""

from .carrier import CallResult, CarrierSimulator, simulate_call
from .echo_agent import AgentSession, EchoAgent
from .fake_openai import FakeOpenAIRealtime
from .fake_twilio import FakeCall, FakeTwilio, route_to
from .fake_ultravox import FakeUltravox, Utterance
from .faults import FaultStream
from .proxy import FaultProxy, ProxiedConnection

__all__ = [
    "AgentSession",
    "CallResult",
    "CarrierSimulator",
    "EchoAgent",
    "FakeCall",
    "FakeOpenAIRealtime",
    "FakeTwilio",
    "FakeUltravox",
    "FaultProxy",
    "FaultStream",
    "ProxiedConnection",
    "Utterance",
    "route_to",
    "simulate_call",
]
