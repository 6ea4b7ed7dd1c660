"""Fakes that speak the real protocols over real (or in-memory) WebSockets.

Shipped with voxbridge so users can test their deployments and embeddings the way voxbridge tests
itself: the echo agent (an OpenAI-Realtime-shaped provider that plays the caller's audio back), a
Twilio carrier simulator, and a fault-injecting stream wrapper.
"""

from .carrier import CallResult, CarrierSimulator, simulate_call
from .echo_agent import AgentSession, EchoAgent
from .faults import FaultStream

__all__ = [
    "AgentSession",
    "CallResult",
    "CarrierSimulator",
    "EchoAgent",
    "FaultStream",
    "simulate_call",
]
