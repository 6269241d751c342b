"""Long-lived objects frozen out of full garbage collections, once one was slow (workers) or at start (API server)."""

import gc

import shared.gc_freeze as collector


def _full_collection_that_counts_as_slow(monkeypatch):
    monkeypatch.setattr(collector, "SLOW_FULL_COLLECTION_SECONDS", 0.0)
    collector.watch_full_collections()
    gc.collect()  # a real full collection, timed by the callback


def test_a_slow_full_collection_freezes_the_survivors_after_the_task(monkeypatch):
    monkeypatch.setattr(collector, "_slow_full_collection_seen", False)
    assert collector.freeze_survivors_after_slow_collection() is False  # nothing slow seen: no freeze
    before = gc.get_freeze_count()
    survivors = [{"n": n} for n in range(10_000)]  # tracked objects alive at the freeze
    try:
        _full_collection_that_counts_as_slow(monkeypatch)
        assert collector.freeze_survivors_after_slow_collection() is True
        assert gc.get_freeze_count() >= before + len(survivors)
        assert collector.freeze_survivors_after_slow_collection() is False  # once per slow collection
    finally:
        gc.unfreeze()
        gc.callbacks.remove(collector._time_full_collections)


def test_young_collections_and_quick_full_ones_freeze_nothing(monkeypatch):
    monkeypatch.setattr(collector, "_slow_full_collection_seen", False)
    monkeypatch.setattr(collector, "SLOW_FULL_COLLECTION_SECONDS", 3600.0)
    collector.watch_full_collections()
    collector.watch_full_collections()  # idempotent
    try:
        assert gc.callbacks.count(collector._time_full_collections) == 1
        gc.collect(0)
        gc.collect(1)
        gc.collect()
        assert collector.freeze_survivors_after_slow_collection() is False
    finally:
        gc.callbacks.remove(collector._time_full_collections)


def test_freeze_what_is_alive_freezes_the_survivors_of_a_collection():
    kept = [{"n": n} for n in range(1_000)]
    try:
        collector.freeze_what_is_alive()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()


def test_the_embedded_worker_leaves_its_callers_collector_alone(sqlite_settings):
    """Its worker is a thread of the caller's process (a CLI run, a service using the client): only
    worker processes and `fusionq serve` freeze their heap."""
    from workers.celery_app import create_app
    from workers.embedded import EmbeddedWorker

    with EmbeddedWorker(create_app(sqlite_settings)):
        assert collector._time_full_collections not in gc.callbacks
