"""``voxbridge demo``: the tour, with no accounts and no keys.

Starts the real server (hypercorn, trio worker, a real loopback port) with the built-in echo agent
as the provider, then places three simulated calls of one carrier (Twilio unless
``voxbridge demo --carrier NAME``) over real WebSockets to its media route:

1. a normal call: audio goes to the agent and comes back, the caller hangs up (the carrier's
   stop event, or a close for a carrier that has none);
2. a stalled caller: sends audio, then goes silent with the TCP connection left open -- the case
   every blocking bridge leaks -- and is ended by the idle timeout;
3. a caller that vanishes: the TCP connection drops with no ``stop`` and no close frame.

For each it prints the reason the server recorded, how long after the caller's last frame the
provider socket was closed (as the echo agent saw it), and whether it was closed at all; then it
scrapes ``/metrics`` over HTTP and shows the disconnect counters.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import trio
from rich.console import Console
from rich.table import Table

from .carriers.registry import CARRIERS
from .echo_agent import EchoSession
from .journal import MemoryJournal
from .server import RunningServer, serve
from .session.state import CallRecord
from .settings import Settings
from .testing import CallResult, simulate_call

__all__ = ["run_demo"]

RECORD_WAIT = 10.0


@attrs.frozen
class Scenario:
    title: str
    what: str
    options: dict[str, Any]  # CarrierSimulator's keyword arguments


async def _await_record(server: RunningServer, call_sid: str) -> CallRecord | None:
    """The server's record of the call, once its teardown finished (bounded wait)."""
    registry = server.app.registry
    with trio.move_on_after(RECORD_WAIT):
        while (record := registry.find(call_sid)) is None:
            await registry.wait_changed()
        return record
    return None


async def run_demo(
    console: Console, idle_timeout: float = 3.0, seconds: float = 3.0, carrier: str = "twilio"
) -> int:
    """Run the tour with ``carrier``'s simulator against its route and print what happened.
    Returns the process exit status."""
    spec = CARRIERS[carrier]
    settings = Settings(port=0, idle_timeout=idle_timeout, provider="echo")
    scenarios = [
        Scenario("normal call", f"talks {seconds:g} s, hangs up", {"seconds": seconds}),
        Scenario(
            "stalled caller",
            "talks 1 s, then silence, TCP left open",
            {"seconds": seconds + idle_timeout + 5, "stall_after": 1.0},
        ),
        Scenario(
            "vanished caller",
            "talks 1 s, then the TCP connection drops",
            {"seconds": seconds + 5, "vanish_after": 1.0},
        ),
    ]
    rows: list[tuple[Scenario, CallResult, CallRecord | None, EchoSession | None]] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(
            # The tour leaves no file behind: its calls are journaled in memory.
            lambda task_status: serve(
                settings,
                journal=MemoryJournal(),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        agent = server.app.echo_agent
        assert agent is not None
        console.print(
            f"[bold]voxbridge demo[/bold]: server on {server.url}, echo agent on {agent.url}, "
            f"{carrier} calls to {spec.media_path}, idle timeout {idle_timeout:g} s\n"
        )
        for number, scenario in enumerate(scenarios, start=1):
            began = trio.current_time()
            with console.status(f"call {number}: {scenario.title} ({scenario.what}) ..."):
                result = await simulate_call(
                    server.url.replace("http://", "ws://", 1) + spec.media_path,
                    carrier=carrier,
                    close_wait=idle_timeout + 10,
                    **scenario.options,
                )
                record = await _await_record(server, result.call_sid)
            session = agent.sessions[number - 1] if len(agent.sessions) >= number else None
            rows.append((scenario, result, record, session))
            reason = record.reason.value if record else "?"
            took = trio.current_time() - began
            console.print(
                f"call {number}: {scenario.title} ({scenario.what}) -> [bold]{reason}[/bold]"
                f" after {took:.1f} s"
            )
        async with httpx.AsyncClient(timeout=5) as client:
            scrape = (await client.get(f"{server.url}/metrics")).text
        stop.set()

    console.print(_table(rows))
    console.print("\n[bold]/metrics[/bold] (scraped over HTTP):")
    for line in scrape.splitlines():
        if line.startswith("voxbridge_call_disconnects_total{") and not line.endswith(" 0.0"):
            console.print(f"  {line}")
    stalled = rows[1][2]
    ok = all(r[3] is not None and r[3].is_closed for r in rows) and (
        stalled is not None and stalled.reason.value == "idle_timeout"
    )
    console.print(
        "\n[green]Every upstream socket was closed; the stalled call was ended by idle_timeout.[/green]"
        if ok
        else "\n[red]Something did not end as it should: see the table above.[/red]"
    )
    return 0 if ok else 1


def _table(
    rows: list[tuple[Scenario, CallResult, CallRecord | None, EchoSession | None]],
) -> Table:
    table = Table(title="what happened to each call", title_justify="left")
    table.add_column("call")
    table.add_column("reason")
    table.add_column("close", justify="right")
    table.add_column("last frame to\nupstream closed", justify="right")
    table.add_column("upstream\nclosed")
    table.add_column("frames\nsent/back", justify="right")
    for scenario, result, record, session in rows:
        closed = session is not None and session.is_closed
        delay = "-"
        if record is not None and session is not None and session.closed_at is not None:
            last = record.last_caller_frame_at or record.accepted_at
            delay = f"{session.closed_at - last:.2f} s"
        # 1006 is what the client library reports when no close frame arrived (the caller left).
        code = "-" if result.close_code in (None, 1006) else str(result.close_code)
        table.add_row(
            scenario.title,
            record.reason.value if record else "?",
            code,
            delay,
            "[green]yes[/green]" if closed else "[red]NO[/red]",
            f"{result.frames_sent}/{result.frames_received}",
        )
    return table
