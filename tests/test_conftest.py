"""The suite's own conftest: objects that exist once collection is over are frozen out of the
cyclic collector (``pytest_collection_finish``), and the collection after every test still finds
what that test leaked.

The leak is caught in a *child* pytest run with a copy of the real ``conftest.py``: a socket left
in a reference cycle, which only the collector frees, must fail the test that made it (as a
``ResourceWarning`` turned into an error by ``filterwarnings = error``) and no other.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

CHILD_INI = """\
[pytest]
trio_mode = true
addopts = --strict-markers --strict-config -p no:cacheprovider -rA
filterwarnings = error
"""

LEAKS = """\
import socket


class Holder:
    def __init__(self):
        self.sock = socket.socket()
        self.me = self  # a cycle: reference counting never frees it, only the collector does


def test_leaks_a_socket_in_a_cycle():
    Holder()


def test_after_the_leak():
    pass
"""


def test_collection_leaves_the_suite_frozen() -> None:
    # Every test module, fixture and parameter made during collection: far more than a test makes.
    assert gc.get_freeze_count() > 10_000


def test_a_socket_leaked_in_a_cycle_fails_the_test_that_leaked_it(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(CHILD_INI)
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_leaks.py").write_text(LEAKS)
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "test_leaks.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = child.stdout
    assert child.returncode == 1, out + child.stderr
    assert "ERROR test_leaks.py::test_leaks_a_socket_in_a_cycle - " in out
    assert "Exception ignored in: <socket.socket" in out
    assert "PASSED test_leaks.py::test_after_the_leak" in out
    assert "2 passed, 1 error" in out
