"""The outside services some tests use -- promtool, Prometheus, PostgreSQL -- found, or the test
skipped with the reason. ``.ci/run`` installs and starts them (``.ci/services``); on a machine
with only Python and pip, the tests that need them say why they did not run."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["binary", "postgres_dsn"]

HOW = "`.ci/run` installs it from Debian (see .ci/services)"


def binary(name: str) -> str:
    """The path of ``name`` (``promtool``, ``prometheus``) on ``PATH``; skips the test without it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH: {HOW}")
    return path


def postgres_dsn() -> str:
    """The DSN of a PostgreSQL the tests may use (``VOXBRIDGE_TEST_POSTGRES``); skips without it."""
    dsn = os.environ.get("VOXBRIDGE_TEST_POSTGRES")
    if not dsn:
        pytest.skip(f"VOXBRIDGE_TEST_POSTGRES is not set: no PostgreSQL for the tests; {HOW}")
    return dsn
