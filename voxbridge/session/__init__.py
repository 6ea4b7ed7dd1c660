"""The call: one nursery per call, a deadline on every wait, one teardown path."""

from .call import Call, run_call
from .carrier import CarrierSocket, TrioWebSocketCarrier
from .registry import CallRegistry
from .state import CallRecord, CallState
from .watchdog import Watchdog, deadline

__all__ = [
    "Call",
    "CallRecord",
    "CallRegistry",
    "CallState",
    "CarrierSocket",
    "TrioWebSocketCarrier",
    "Watchdog",
    "deadline",
    "run_call",
]
