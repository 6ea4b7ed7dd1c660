"""voxbridge: bridge phone calls to realtime voice AI, with a deadline on every wait.

The embedding API (see docs/embedding.md)::

    from voxbridge import run_call, Settings, TrioWebSocketCarrier, ProviderEndpoint

    disconnect = await run_call(TrioWebSocketCarrier(ws), endpoint, settings=Settings())
    disconnect.reason   # one of voxbridge.Reason: why the call ended
"""

from .agents import AgentConfig
from .errors import Disconnect, Reason, RemoteProtocolError
from .journal import (
    CallJournal,
    FanoutJournal,
    JournalError,
    MemoryJournal,
    PostgresJournal,
    SQLiteJournal,
    journal_for,
)
from .metrics import Metrics
from .providers.base import Provider
from .providers.endpoint import ProviderEndpoint
from .providers.registry import provider_for
from .session import Call, CallRecord, CallRegistry, CarrierSocket, TrioWebSocketCarrier, run_call
from .settings import Settings, SettingsError
from .tools import Tool, ToolContext

__version__ = "0.1.0"

__all__ = [
    "AgentConfig",
    "Call",
    "CallJournal",
    "CallRecord",
    "CallRegistry",
    "CarrierSocket",
    "Disconnect",
    "FanoutJournal",
    "JournalError",
    "MemoryJournal",
    "Metrics",
    "PostgresJournal",
    "Provider",
    "ProviderEndpoint",
    "Reason",
    "RemoteProtocolError",
    "SQLiteJournal",
    "Settings",
    "SettingsError",
    "Tool",
    "ToolContext",
    "TrioWebSocketCarrier",
    "__version__",
    "journal_for",
    "provider_for",
    "run_call",
]
