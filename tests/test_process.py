"""The programs as an operator runs them: real processes, real signals, real sockets."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from voxbridge.cli import main
from voxbridge.server.serve import listen_socket, tune_gc
from voxbridge.settings import Settings, SettingsError
from voxbridge.testing import simulate_call

PYTHON = sys.executable
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))


async def read_until(process: trio.Process, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """The first match of ``pattern`` in ``process``'s stdout, within ``timeout`` seconds."""
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(timeout):
        while True:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"process ended before {pattern!r}; output: {seen!r}")
            seen += chunk
            match = re.search(pattern, seen.decode(errors="replace"))
            if match:
                return match


async def test_serve_port_zero_prints_url_serves_a_call_and_stops_on_sigterm() -> None:
    env = {**os.environ, "VOXBRIDGE_IDLE_TIMEOUT": "5", "VOXBRIDGE_LOG_FORMAT": "json"}
    process = await trio.lowlevel.open_process(
        [PYTHON, "-m", "voxbridge", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        match = await read_until(process, r"voxbridge listening on (http://127\.0\.0\.1:\d+)\n")
        url = match.group(1)
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
            assert (await client.get(f"{url}/readyz")).status_code == 200
        with trio.fail_after(20):
            result = await simulate_call(url.replace("http", "ws") + "/twilio/media", seconds=0.5)
        assert (result.close_code, result.close_reason) == (1000, "caller_stop")
        assert result.frames_received > 0
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            code = await process.wait()
        assert code == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def test_asgi_app_runs_under_hypercorn_k_trio() -> None:
    env = {**os.environ, "VOXBRIDGE_PROVIDER": "echo"}
    process = await trio.lowlevel.open_process(
        [HYPERCORN, "-k", "trio", "--bind", "127.0.0.1:0", "voxbridge.asgi:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        match = await read_until(process, r"Running on (http://127\.0\.0\.1:\d+)")
        url = match.group(1)
        with trio.fail_after(20):
            result = await simulate_call(url.replace("http", "ws") + "/twilio/media", seconds=0.5)
        assert (result.close_code, result.close_reason) == (1000, "caller_stop")
        assert result.frames_received > 0
    finally:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


def test_listening_socket_options_are_inherited_by_accepted_sockets() -> None:
    """TCP_USER_TIMEOUT and keepalive on carrier sockets, set at the kernel (docs/library-notes.md)."""
    listener = listen_socket(Settings(port=0, tcp_user_timeout=7))
    client = socket.create_connection(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        for sock in (accepted, client, listener):
            sock.close()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["serve", "--idle-timeout", "-1"], {}, "--idle-timeout / VOXBRIDGE_IDLE_TIMEOUT must be"),
        (["serve"], {"VOXBRIDGE_PORT": "eighty"}, "VOXBRIDGE_PORT='eighty': expected int"),
        (["serve"], {"VOXBRIDGE_PROVIDER": "nope"}, "must be one of echo, openai, ultravox"),
        (
            ["serve", "--upstream-batch-ms", "501"],
            {},
            "--upstream-batch-ms / VOXBRIDGE_UPSTREAM_BATCH_MS must be <= 500",
        ),
        (["serve", "--provider", "openai"], {"OPENAI_API_KEY": ""}, "needs OPENAI_API_KEY"),
        (["serve", "--provider-url", "http://x"], {}, "must be ws:// or wss://"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    assert message in capsys.readouterr().out


def test_settings_precedence_flag_over_env_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXBRIDGE_IDLE_TIMEOUT", "12")
    assert Settings.from_env().idle_timeout == 12
    assert Settings.from_env(idle_timeout=3.5).idle_timeout == 3.5
    monkeypatch.delenv("VOXBRIDGE_IDLE_TIMEOUT")
    monkeypatch.setenv("WS_IDLE_TIMEOUT_SECONDS", "42")
    assert Settings.from_env().idle_timeout == 42
    monkeypatch.delenv("WS_IDLE_TIMEOUT_SECONDS")
    assert Settings.from_env().idle_timeout == 60


def test_secrets_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    from voxbridge.providers.registry import provider_for

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    settings = Settings.from_env(provider="openai")
    provider = provider_for(settings)
    endpoint = provider.endpoint  # type: ignore[attr-defined]
    assert ("Authorization", "Bearer sk-test-secret-123") in endpoint.headers
    assert "sk-test-secret" not in repr(settings)
    assert "sk-test-secret" not in repr(endpoint)
    assert "sk-test-secret" not in repr(provider)


async def test_call_command_against_a_server_prints_the_outcome(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from test_e2e_server import running

    with trio.fail_after(20):
        async with running() as (server, _agent):
            code = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [PYTHON, "-m", "voxbridge", "call", server.media_url, "--seconds", "0.5"],
                    capture_output=True,
                    text=True,
                    timeout=15,
                )
            )
    assert code.returncode == 0, code.stderr
    assert "caller_stop" in code.stdout
    assert "1000" in code.stdout


async def test_call_command_reports_a_refused_call_in_one_line() -> None:
    from test_e2e_server import running

    with trio.fail_after(20):
        async with running() as (server, _agent):
            wrong = server.media_url.replace("/twilio/media", "/nowhere")
            done = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [PYTHON, "-m", "voxbridge", "call", wrong, "--seconds", "0.2"],
                    capture_output=True,
                    text=True,
                    timeout=15,
                )
            )
    assert done.returncode == 1
    assert "refused the call (HTTP 404)" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_tune_gc_raises_only_the_young_generation_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(Settings(gc_threshold=12345))
        assert gc.get_threshold() == (12345, before[1], before[2])
        gc.set_threshold(*before)
        tune_gc(Settings(gc_threshold=0))  # 0: leave the collector alone
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("bad", [-1, 1.5, "many"])
def test_gc_threshold_must_be_a_whole_number(bad: object) -> None:
    with pytest.raises(SettingsError, match="--gc-threshold / VOXBRIDGE_GC_THRESHOLD"):
        Settings(gc_threshold=bad)  # type: ignore[arg-type]
