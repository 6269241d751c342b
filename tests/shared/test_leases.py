"""Claims, their heartbeat and the fence on late writers, against real Postgres and SQLite.

A claim takes only work no live worker holds; a claim's writes land only while its token is the
row's; the heartbeat keeps a working claim's lease ahead of the clock and notices when the claim
was taken from it.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest
import sqlalchemy as sa

from shared.db.engine import session_for
from shared.db.items import claim_pending, mark_failed, store_features, store_predictions
from shared.db.jobs import create_job
from shared.db.leases import requeue_items
from shared.db.llm import claim_requests, store_request_results
from shared.db.models import Item, ItemFeatures, LlmRequest, Prediction, utcnow
from shared.llm.result import TextScore
from shared.service.claims import StageClaim
from shared.service.submit import new_items
from shared.settings import Settings


@pytest.fixture
def settings(db_settings) -> Settings:
    return db_settings.model_copy(update={"item_lease_seconds": 3})


def _job(settings: Settings, n: int, mode: str = "fast") -> list[int]:
    options = (dict(classifier=None, labels={"names": ["a", "b"], "descriptions": ["", ""]}, multi_label=False,
                    llm_source="local") if mode == "llm" else dict(classifier=None))
    with session_for(settings.effective_database_url) as session, session.begin():
        job, _, _ = create_job(session=session, items=new_items([f"t{i}" for i in range(n)], max_chars=100), mode=mode,
                               idempotency_key=None, **options)
        return list(session.scalars(sa.select(Item.id).where(Item.job_id == job.id).order_by(Item.position)))


def _claim(settings, ids, token, source=None) -> list[int]:
    with session_for(settings.effective_database_url) as session, session.begin():
        if source:
            return [c.id for c in claim_requests(session=session, item_ids=ids, source=source, lease_seconds=60,
                                                 token=token)]
        return [c.id for c in claim_pending(session=session, item_ids=ids, lease_seconds=60, token=token)]


def _lapse(settings, table, ids) -> None:
    """The holder stopped renewing and the sweeper queued the work again."""
    with session_for(settings.effective_database_url) as session, session.begin():
        column = table.item_id if table is LlmRequest else table.id
        session.execute(sa.update(table).where(column.in_(ids)).values(lease_until=None))


def test_a_claim_takes_only_what_no_live_worker_holds(settings):
    ids = _job(settings, 3)
    assert _claim(settings, ids[:2], token=1) == ids[:2]
    assert _claim(settings, ids, token=2) == [ids[2]]  # a duplicate message finds the first two held
    _lapse(settings, Item, [ids[0]])
    assert _claim(settings, ids, token=3) == [ids[0]]
    with session_for(settings.effective_database_url) as session:
        rows = {i.id: (i.claim_token, i.attempts) for i in session.scalars(sa.select(Item))}
    assert rows == {ids[0]: (3, 2), ids[1]: (1, 1), ids[2]: (2, 1)}


def test_a_late_writer_whose_claim_was_taken_over_writes_nothing(settings):
    """Worker A was paused past its lease; B claimed the items again. A's writes land nowhere, B's land."""
    ids = _job(settings, 3)
    _claim(settings, ids, token=111)
    _lapse(settings, Item, ids)
    _claim(settings, ids, token=222)
    vectors = {i: np.ones(4, dtype=np.float32).tobytes() for i in ids}
    rows = [{"item_id": i, "labels": ["a"], "probabilities": [0.9, 0.1], "confidence": 0.9, "signals": ["encoder"],
             "flags": [], "latency_ms": 1.0} for i in ids]

    def predict(session, some_ids, token):
        return store_predictions(session=session, item_ids=some_ids, from_statuses=("pending",), token=token,
                                 make_rows=lambda: [r for r in rows if r["item_id"] in some_ids])

    with session_for(settings.effective_database_url) as session, session.begin():
        assert store_features(session=session, encoder_key="k", vectors=vectors, dim=4, token=111) == []
        assert predict(session, ids, token=111) == 0
        assert sum(mark_failed(session=session, errors={ids[0]: "boom"}, token=111).values()) == 0
    with session_for(settings.effective_database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Prediction)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(ItemFeatures)) == 0
        assert set(session.scalars(sa.select(Item.status))) == {"pending"}
    with session_for(settings.effective_database_url) as session, session.begin():
        assert predict(session, ids[:1], token=222) == 1
        assert store_features(session=session, encoder_key="k", vectors=vectors, dim=4, token=222) == ids[1:]
    with session_for(settings.effective_database_url) as session, session.begin():  # A wakes up again: too late
        assert predict(session, ids, token=111) == 0
        assert predict(session, ids[:1], token=222) == 0
    with session_for(settings.effective_database_url) as session:
        assert session.scalars(sa.select(Prediction.item_id)).all() == [ids[0]]
        statuses = dict(session.execute(sa.select(Item.id, Item.status)).tuples().all())
        assert statuses == {ids[0]: "done", ids[1]: "embedded", ids[2]: "embedded"}
        assert set(session.scalars(sa.select(Item.lease_until))) == {None}  # queued for the aggregator, unclaimed


def test_a_late_llm_answer_is_fenced_too(settings):
    ids = _job(settings, 2, mode="llm")
    assert _claim(settings, ids, token=5, source="local") == ids
    _lapse(settings, LlmRequest, ids)
    assert _claim(settings, ids, token=6, source="local") == ids
    answer = {i: TextScore(probabilities=np.array([0.7, 0.3]), method="logprobs") for i in ids}
    with session_for(settings.effective_database_url) as session, session.begin():
        assert store_request_results(session=session, source="local", results=answer, token=5) == []
        assert store_request_results(session=session, source="local", results=answer, token=6) == ids
        assert store_request_results(session=session, source="local", results=answer, token=6) == []
    with session_for(settings.effective_database_url) as session:
        assert set(session.scalars(sa.select(LlmRequest.status))) == {"done"}


def test_the_heartbeat_renews_a_working_claim_and_notices_when_it_was_taken(settings):
    ids = _job(settings, 2)
    _claim(settings, ids, token=9)
    with session_for(settings.effective_database_url) as session, session.begin():  # a short lease, as claimed
        session.execute(sa.update(Item).values(lease_until=utcnow() + dt.timedelta(seconds=3)))
    claim = StageClaim(job=None, classifier=None, items=[_Held(i) for i in ids], token=9)
    started = utcnow()
    with claim.heartbeat(settings) as beat:
        time.sleep(2.5)  # two beats (every third of the 3 s lease)
        with session_for(settings.effective_database_url) as session:
            leases = set(session.scalars(sa.select(Item.lease_until)))
        assert beat.beats >= 1 and not beat.lost
        assert all(_aware(lease) > started + dt.timedelta(seconds=3.5) for lease in leases)
        with session_for(settings.effective_database_url) as session, session.begin():
            requeue_items(session=session, item_ids=ids, now=utcnow())  # the sweeper judged it lapsed
        time.sleep(1.2)
        assert beat.lost
    with session_for(settings.effective_database_url) as session:
        assert set(session.scalars(sa.select(Item.lease_until))) == {None}  # a lost claim is not renewed


class _Held:
    def __init__(self, item_id: int) -> None:
        self.id = item_id


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
