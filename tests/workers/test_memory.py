"""The embed worker gives freed heap back at most once per interval (each trim costs the next task page faults)."""

import workers.memory as memory


def test_trims_once_per_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    monkeypatch.setattr(memory, "_last_trim", float("-inf"))
    clock = iter([100.0, 101.0, 109.9, 110.5])
    monkeypatch.setattr(memory.time, "monotonic", lambda: next(clock))
    assert [memory.release_freed_memory(10.0) for _ in range(4)] == [True, False, False, True]
    assert calls == [0, 0]  # malloc_trim(0), twice


def test_the_real_trim_runs_here():
    memory._last_trim = float("-inf")
    assert memory.release_freed_memory() is (memory._malloc_trim() is not None)

