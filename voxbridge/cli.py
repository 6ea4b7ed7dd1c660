"""``voxbridge`` command line: serve, call, demo, calls, transcript, dial.

Every ``Settings`` field is a ``serve`` flag and a ``VOXBRIDGE_*`` variable; flags win over the
environment, the environment over defaults. Bad values exit with status 2 and a one-line message
that names the flag and the variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio
from rich.console import Console
from rich.table import Table

from . import __version__, tracing
from .agents import check_agents
from .carriers.registry import CARRIERS
from .journal import JournalError
from .logs import configure
from .providers.registry import provider_for
from .settings import Settings, SettingsError, scalar_type

if TYPE_CHECKING:
    from .server import RunningServer

__all__ = ["main"]

console = Console(highlight=False)


def _add_settings_flags(
    parser: argparse.ArgumentParser, *, only: Sequence[str] | None = None
) -> None:
    fields = [(field.name, field) for field in Settings.cli_fields()]
    if only is None:  # each provider's own settings: --openai-model, --gemini-model, ...
        fields += [(o.name, o.field) for o in Settings.options() if o.field.metadata["cli"]]
    for name, field in fields:
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        kind = scalar_type(field)
        default = field.default
        if kind is bool:  # a switch: given means true; absent leaves the environment's value
            parser.add_argument(
                flag,
                dest=name,
                action="store_true",
                default=None,
                help=f"{field.metadata['help']} (env VOXBRIDGE_{name.upper()}=1)",
            )
            continue
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=None,
            metavar=name.upper() if kind is str else kind.__name__.upper(),
            help=f"{field.metadata['help']} (env VOXBRIDGE_{name.upper()}; default {default})",
        )


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    names = [f.name for f in attrs.fields(Settings)] + [o.name for o in Settings.options()]
    values = {name: getattr(args, name, None) for name in names}
    values.update(overrides)
    return Settings.from_env(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxbridge",
        description="Bridge phone calls (carrier media streams) to realtime voice AI, with a "
        "deadline on every wait.",
    )
    parser.add_argument("--version", action="version", version=f"voxbridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server until SIGINT/SIGTERM, then drain")
    _add_settings_flags(serve)

    call = commands.add_parser("call", help="place a simulated carrier call against a server")
    call.add_argument("url", help="the media endpoint, e.g. ws://127.0.0.1:8080/twilio/media")
    call.add_argument("--seconds", type=float, default=5.0, help="seconds of audio (default 5)")
    call.add_argument("--wav", help="stream this WAV file (any PCM rate; default: a 440 Hz tone)")
    call.add_argument(
        "--stall-after", type=float, help="stop sending after S seconds, keep TCP open"
    )
    call.add_argument("--vanish-after", type=float, help="drop TCP abruptly after S seconds")
    call.add_argument("--no-stop", action="store_true", help="do not send the final stop")
    call.add_argument(
        "--close-wait", type=float, default=90.0, help="how long to wait for the server to close"
    )

    demo = commands.add_parser(
        "demo", help="the tour: echo agent, a normal, a stalled and a lost call"
    )
    demo.add_argument(
        "--idle-timeout",
        type=float,
        default=3.0,
        help="idle timeout for the demo's server (default 3 s, so the stall ends quickly)",
    )
    demo.add_argument("--seconds", type=float, default=3.0, help="length of the normal call")
    for sub in (call, demo):
        sub.add_argument(
            "--carrier",
            choices=tuple(CARRIERS),
            default="twilio",
            help="the carrier whose wire the simulated caller speaks (default twilio)",
        )
        sub.add_argument("--log-level", dest="log_level", default=None, help="debug, info, warning")

    calls = commands.add_parser("calls", help="list recent calls from the journal (--db)")
    _add_settings_flags(calls, only=("db",))
    calls.add_argument(
        "--limit", type=int, default=20, help="how many calls, newest first (default 20)"
    )
    transcript = commands.add_parser("transcript", help="print one call's transcript (--db)")
    transcript.add_argument("call_sid", metavar="CALL_SID", help="the CallSid (or voxbridge id)")
    _add_settings_flags(transcript, only=("db",))

    dial = commands.add_parser(
        "dial",
        help="place an outbound call through Twilio's REST API, answered by this deployment",
    )
    dial.add_argument("to", metavar="TO", help="the number to call (E.164), or a sip: URI")
    dial.add_argument(
        "--from", dest="from_", required=True, metavar="FROM", help="your Twilio number (E.164)"
    )
    dial.add_argument("--agent", help="the agent that answers (from --agents; default: default)")
    dial.add_argument(
        "--wait",
        action="store_true",
        help="follow the call until it ends, then print its journal record (--db)",
    )
    dial.add_argument(
        "--wait-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="with --wait: give up after S seconds (default 600)",
    )
    _add_settings_flags(
        dial,
        only=(
            "public_url",
            "twilio_account_sid",
            "twilio_api_url",
            "twilio_auth_token",
            "agents",
            "tools_module",  # the agents file is checked as serve checks it: with these two
            "transfer_to",
            "db",
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voxbridge`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            settings = _settings(args)
            settings.agent_instructions()  # an unreadable --instructions-file: one line, exit 2
            agents, _ = check_agents(settings)  # a bad --agents file or --tools-module: the same
            named = {agent.provider for agent in (agents.default, *agents) if agent.provider}
            for name in sorted(named | {settings.provider}):
                if name != "echo" or settings.provider_url:
                    # a missing key or a bad URL: one line, exit 2, before binding
                    provider_for(attrs.evolve(settings, provider=name))
            configure(settings.log_format, settings.log_level)
            tracing.configure_from_env()  # OTEL_EXPORTER_OTLP_ENDPOINT turns traces on
            try:
                trio.run(_serve, settings)
            finally:
                tracing.shutdown()  # export the spans still queued
        elif args.command == "call":
            configure("console", args.log_level or "warning")
            return trio.run(_call, args)
        elif args.command == "demo":
            configure("console", args.log_level or "warning")
            from .demo import run_demo

            return trio.run(run_demo, console, args.idle_timeout, args.seconds, args.carrier)
        elif args.command in ("calls", "transcript"):
            from .journal_cli import print_calls, print_transcript

            db = Settings.from_env(db=args.db).db
            if args.command == "calls":
                return print_calls(console, db, args.limit)
            return print_transcript(console, db, args.call_sid)
        elif args.command == "dial":
            from .dial import plan_dial, run_dial

            if not args.wait_timeout > 0:
                raise SettingsError("--wait-timeout must be positive")
            plan = plan_dial(_settings(args), args.to, args.from_, agent=args.agent)
            return trio.run(
                partial(run_dial, console, plan, wait=args.wait, wait_timeout=args.wait_timeout)
            )
    except (SettingsError, JournalError) as exc:  # a bad setting, or a --db that cannot be opened
        # markup=False: a message may quote "[agents.sales]", which rich would take for a tag
        console.print(f"voxbridge: {exc}", style="red", soft_wrap=True, markup=False)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(settings: Settings) -> None:
    from .server import serve

    # serve runs as the main task (no nursery around it), so an error before it listens, such as
    # a journal that cannot be opened, reaches main() as itself.
    await serve(settings, task_status=_Listening())


class _Listening:
    """``serve``'s task status: prints the line scripts and tests wait for with ``--port 0``."""

    def started(self, value: RunningServer | None = None) -> None:
        assert value is not None
        print(f"voxbridge listening on {value.url}", flush=True)


async def _call(args: argparse.Namespace) -> int:
    from .audio import read_wav_as_ulaw
    from .testing import simulate_call

    audio = None
    if args.wav:
        try:
            audio = read_wav_as_ulaw(args.wav)
        except (OSError, ValueError) as exc:
            console.print(f"voxbridge call: {exc}", style="red")
            return 2
    try:
        result = await simulate_call(
            args.url,
            carrier=args.carrier,
            audio=audio,
            seconds=args.seconds,
            stall_after=args.stall_after,
            vanish_after=args.vanish_after,
            send_stop=not args.no_stop,
            close_wait=args.close_wait,
        )
    except (OSError, ValueError, trio.TooSlowError) as exc:
        console.print(f"voxbridge call: cannot reach {args.url}: {exc}", style="red")
        return 1
    if result.rejected_status is not None:
        console.print(
            f"voxbridge call: the server refused the call (HTTP {result.rejected_status})"
        )
        return 1
    table = Table(title=f"call {result.call_sid}", show_header=False)
    table.add_row("frames sent", str(result.frames_sent))
    table.add_row("frames received", str(result.frames_received))
    rtt = result.round_trip
    table.add_row("first round trip", f"{rtt * 1000:.0f} ms" if rtt is not None else "-")
    if result.hung_up:  # a carrier without a stop event (Plivo, Vonage) hangs up by closing
        table.add_row("close code", "- (the caller hung up: it closed the socket)")
    else:
        table.add_row(
            "close code", str(result.close_code) if result.close_code else "- (no close frame)"
        )
    table.add_row("close reason", result.close_reason or "-")
    console.print(table)
    return 0 if result.close_code is not None or result.hung_up else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
