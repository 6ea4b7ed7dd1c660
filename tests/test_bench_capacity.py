"""The capacity benchmark's search (benchmarks/capacity.py): which steps it measures and what it
concludes, fed the windows' verdicts of a model peer that holds ``knee`` calls. No processes and no
clock: the search is bookkeeping, and the suite's timings live in the benchmarks themselves."""

from __future__ import annotations

from benchmarks.capacity import Params, Search


def search(
    knee: int, noisy: frozenset[tuple[int, int]] = frozenset(), **params: object
) -> tuple[Search, list[int]]:
    """Run a search to its end; ``noisy`` flips the verdict of those (calls, nth window) pairs.
    Returns the search and the calls of every window measured, in order."""
    state = Search(Params(**params))  # type: ignore[arg-type]
    windows: list[int] = []
    while state.calls is not None:
        n = state.calls
        nth = windows.count(n)
        windows.append(n)
        state.record((n <= knee) != ((n, nth) in noisy))
        assert len(windows) < 100
    return state, windows


def steps(state: Search) -> list[tuple[int, bool]]:
    return [(step["calls"], step["passed"]) for step in state.steps]


def test_climbs_then_bisects_to_within_the_resolution() -> None:
    state, windows = search(31)
    assert steps(state) == [
        (10, True),
        (14, True),
        (20, True),
        (28, True),
        (40, False),
        (34, False),
        (31, True),
    ]
    assert (state.passed, state.failed) == (31, 34)  # 34 - 31 <= 10 % of 31
    # a clear step takes two windows of three: the third could not change the verdict
    assert windows == [10, 10, 14, 14, 20, 20, 28, 28, 40, 40, 34, 34, 31, 31]


def test_one_noisy_window_decides_nothing() -> None:
    # a hiccup fails the first window at 20 calls, a lucky window passes at 40
    state, windows = search(31, frozenset({(20, 0), (40, 0)}))
    assert (state.passed, state.failed) == (31, 34)
    assert windows.count(20) == windows.count(40) == 3
    assert [s["windows"] for s in state.steps if s["calls"] in (20, 40)] == [
        [False, True, True],
        [True, False, False],
    ]


def test_with_one_window_per_step_the_same_hiccup_ends_the_search_early() -> None:
    # what the scenario did before repeated steps: one noisy 6 s window decided the figure
    state, _ = search(31, frozenset({(20, 0)}), repeats=1, need=1)
    assert (state.passed, state.failed) == (19, 20)  # not 31


def test_a_failing_first_step_bisects_down() -> None:
    state, _ = search(5)
    assert steps(state) == [(10, False), (5, True), (7, False), (6, False)]
    assert (state.passed, state.failed) == (5, 6)


def test_bounded_by_max_calls_and_max_steps() -> None:
    state, _ = search(1000, max_calls=40)
    assert [calls for calls, _ in steps(state)] == [10, 14, 20, 28, 40]
    assert (state.passed, state.failed) == (40, None)  # at least 40: no step failed
    state, windows = search(1000, max_steps=3)
    assert (state.passed, len(state.steps), len(windows)) == (20, 3, 6)
