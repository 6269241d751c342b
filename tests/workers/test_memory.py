"""The embed worker gives freed heap back only once it has grown (each trim costs the next task page faults)."""

import workers.memory as memory


def test_trims_first_then_only_after_growth(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    monkeypatch.setattr(memory, "_resident_after_trim", None)
    # resident MB read before each call, and again right after each trim
    readings = iter([700.0, 500.0, 650.0, 755.9, 756.0, 520.0, 700.0])
    monkeypatch.setattr(memory, "resident_mb", lambda: next(readings))
    assert [memory.release_freed_memory(256.0) for _ in range(5)] == [True, False, False, True, False]
    assert calls == [0, 0]  # malloc_trim(0), twice: first call, then 756 >= 500 + 256
    assert memory._resident_after_trim == 520.0


def test_nothing_to_trim_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.release_freed_memory() is False


def test_the_real_trim_runs_here_and_shrinks_the_heap(monkeypatch):
    monkeypatch.setattr(memory, "_resident_after_trim", None)
    if memory._malloc_trim() is None:
        assert memory.release_freed_memory() is False
        return
    assert memory.release_freed_memory() is True
    blocks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MB of heap blocks
    last = blocks[-1]  # alive above the freed ones, so free() cannot hand them back itself
    grown = memory.resident_mb()
    del blocks
    assert memory.release_freed_memory(growth_mb=128.0) is True
    assert memory.resident_mb() < grown - 128
    assert len(last) == 64 * 1024
