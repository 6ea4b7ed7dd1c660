# voxbridge developer tasks. The README's two commands create .venv and call `demo` / `check`.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv/bin"
paths := "voxbridge tests docs benchmarks"
# pytest-xdist: one worker per logical core, at most 4 (the suite's bar is 10 min on 2 cores);
# worksteal evens out tests from 0.01 s to 20 s. `-n 0` after it runs in one process.
workers := "--numprocesses=logical --maxprocesses=4 --dist=worksteal"

# list the recipes
default:
    @just --list

# the tour: echo agent, a normal, a stalled and a vanished call, with no accounts or keys
demo *args:
    {{venv}}/voxbridge demo {{args}}

# run the server (see `voxbridge serve --help` for every flag)
serve *args:
    {{venv}}/voxbridge serve {{args}}

# place a simulated Twilio call: just call ws://127.0.0.1:8080/twilio/media --stall-after 2
call *args:
    {{venv}}/voxbridge call {{args}}

# lint, strict typing, then the test suite (pytest arguments pass through): what CI runs
test *args: lint
    {{venv}}/pytest {{workers}} {{args}}

# only the test suite, no lint (pytest arguments pass through)
pytest *args:
    {{venv}}/pytest {{workers}} {{args}}

# lint, format check and strict typing
lint:
    {{venv}}/ruff check {{paths}}
    {{venv}}/ruff format --check {{paths}}
    {{venv}}/mypy

# everything CI runs (same as test)
check: test

# format and auto-fix
fmt:
    {{venv}}/ruff format {{paths}}
    {{venv}}/ruff check --fix {{paths}}

# the full benchmark suite (~70 min): voxbridge vs two baselines; writes benchmarks/results/<timestamp>/
bench *args:
    {{venv}}/python -m benchmarks.run {{args}}

# every scenario at toy size (< 1 min): checks the harness, not the targets
bench-smoke:
    {{venv}}/python -m benchmarks.run --smoke
