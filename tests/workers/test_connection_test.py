"""Worker processes skip the pool's pre-ping (tasks retry on a dead connection); the embedded worker,
which shares its caller's process, keeps it."""

from types import SimpleNamespace

import shared.db.engine as engine
from workers.celery_app import _on_worker_start


def _worker(broker_url: str):
    return SimpleNamespace(app=SimpleNamespace(conf={"broker_url": broker_url}))


def test_only_a_worker_process_drops_the_pre_ping(monkeypatch):
    monkeypatch.setattr(engine, "_PRE_PING", True)
    _on_worker_start(_worker("memory://"))
    assert engine.make_engine("postgresql+psycopg://u@127.0.0.1/x").pool._pre_ping is True
    _on_worker_start(_worker("redis://127.0.0.1:6379/0"))
    assert engine.make_engine("postgresql+psycopg://u@127.0.0.1/x").pool._pre_ping is False
    engine.test_connections_before_use(True)  # as every other test of this process expects
