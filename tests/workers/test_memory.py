"""Worker memory between tasks: freed heap given back at most once per interval (each trim costs the next
task page faults); long-lived objects frozen out of full collections once one was slow."""

import gc

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


def _full_collection_that_counts_as_slow(monkeypatch):
    monkeypatch.setattr(memory, "SLOW_FULL_COLLECTION_SECONDS", 0.0)
    memory.watch_full_collections()
    gc.collect()  # a real full collection, timed by the callback


def test_a_slow_full_collection_freezes_the_survivors_after_the_task(monkeypatch):
    monkeypatch.setattr(memory, "_slow_full_collection_seen", False)
    assert memory.freeze_survivors_after_slow_collection() is False  # nothing slow seen: no freeze
    before = gc.get_freeze_count()
    survivors = [{"n": n} for n in range(10_000)]  # tracked objects alive at the freeze
    try:
        _full_collection_that_counts_as_slow(monkeypatch)
        assert memory.freeze_survivors_after_slow_collection() is True
        assert gc.get_freeze_count() >= before + len(survivors)
        assert memory.freeze_survivors_after_slow_collection() is False  # once per slow collection
    finally:
        gc.unfreeze()
        gc.callbacks.remove(memory._time_full_collections)


def test_young_collections_and_quick_full_ones_freeze_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_slow_full_collection_seen", False)
    monkeypatch.setattr(memory, "SLOW_FULL_COLLECTION_SECONDS", 3600.0)
    memory.watch_full_collections()
    memory.watch_full_collections()  # idempotent
    try:
        assert gc.callbacks.count(memory._time_full_collections) == 1
        gc.collect(0)
        gc.collect(1)
        gc.collect()
        assert memory.freeze_survivors_after_slow_collection() is False
    finally:
        gc.callbacks.remove(memory._time_full_collections)
