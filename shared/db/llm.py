"""The ``llm_requests`` table (LLM work per item and tier) and the ``llm_scores`` answer cache.

Requests are unique on (item, source): that key is what makes an escalation happen at most once
per item and tier. Cache rows are keyed by ``shared.llm.cache``'s cache key; this module only
stores and reads them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.common import ClaimedItem, claimable, dialect_insert, lease_end
from shared.db.engine import session_for
from shared.db.models import Item, LlmRequest, LlmScore, utcnow
from shared.vocab import RequestStatus, ScoreMethod

# --- requests -----------------------------------------------------------------------------------


def request_row(*, job_id: uuid.UUID, item_id: int, tier: int, source: str, reason: str, now: dt.datetime,
                status: str = RequestStatus.QUEUED, error: str | None = None) -> dict:
    """One ``llm_requests`` row, queued and unclaimed (or skipped, for a tier that was down)."""
    return {"job_id": job_id, "item_id": item_id, "tier": tier, "source": source, "reason": reason, "status": status,
            "attempts": 0, "lease_until": None, "scores": None, "method": None, "cost_usd": 0.0, "error": error,
            "created_at": now, "updated_at": now}


def add_requests(*, session: Session, rows: Sequence[dict]) -> set[int]:
    """Insert requests, skipping any (item, source) that exists; the item ids whose queued request was added.

    The unique key is the guard that makes an escalation happen at most once per item and tier,
    however many aggregators or retries try.
    """
    if not rows:
        return set()
    insert = dialect_insert(session)
    added = session.execute(insert(LlmRequest).on_conflict_do_nothing(index_elements=["item_id", "source"])
                            .returning(LlmRequest.item_id, LlmRequest.status), list(rows)).all()
    return {item_id for item_id, status in added if status == RequestStatus.QUEUED}


def claim_requests(*, session: Session, item_ids: Sequence[int], source: str, lease_seconds: int,
                   token: int) -> list[ClaimedItem]:
    """The items among ``item_ids`` whose queued ``source`` request no live worker holds, now held
    under ``token`` (an attempt counted, leased)."""
    now = utcnow()
    requests = LlmRequest.__table__
    taken = session.execute(
        sa.update(requests).where(requests.c.item_id.in_(list(item_ids)), requests.c.source == source,
                                  requests.c.status == RequestStatus.QUEUED, claimable(requests, now))
        .values(attempts=requests.c.attempts + 1, lease_until=lease_end(now, lease_seconds), claim_token=token,
                updated_at=now)
        .returning(requests.c.item_id)).scalars().all()
    if not taken:
        return []
    rows = session.execute(sa.select(Item.id, Item.text).where(Item.id.in_(taken)).order_by(Item.id)).all()
    return [ClaimedItem(id=r[0], text=r[1]) for r in rows]


def store_request_results(*, session: Session, source: str, results: dict, token: int) -> list[int]:
    """Record each item's answer (a ``TextScore``) from ``source``: done with scores and cost, or failed
    with the reason; the item ids recorded now.

    Only requests still queued and held by this claim (``token``) change, so a re-run or a worker
    that was paused past its lease writes nothing.
    """
    if not results:
        return []
    now = utcnow()
    requests = LlmRequest.__table__
    # the requests this claim still holds, locked until the commit, so no sweep or claim moves them meanwhile
    held = sorted(session.execute(sa.select(requests.c.item_id).where(
        requests.c.item_id.in_(list(results)), requests.c.source == source, requests.c.claim_token == token,
        requests.c.status == RequestStatus.QUEUED).with_for_update()).scalars().all())
    if not held:
        return []
    rows = []
    for item_id in held:
        s = results[item_id]
        failed = s.method == ScoreMethod.FAILED
        rows.append({"b_item": item_id, "b_status": RequestStatus.FAILED if failed else RequestStatus.DONE,
                     "b_scores": None if failed else [float(p) for p in s.probabilities],
                     "b_method": None if failed else s.method,
                     "b_error": (s.error or "LLM answer failed")[:4000] if failed else None,
                     "b_cost": s.spent_usd})
    statement = (sa.update(requests)
                 .where(requests.c.item_id == sa.bindparam("b_item"), requests.c.source == source,
                        requests.c.claim_token == token)
                 .values(status=sa.bindparam("b_status"), scores=sa.bindparam("b_scores", type_=sa.JSON),
                         method=sa.bindparam("b_method"), error=sa.bindparam("b_error"),
                         cost_usd=sa.bindparam("b_cost"), lease_until=None, updated_at=now))
    session.connection().execute(statement, rows)
    # their items now wait for the aggregator, from now (the sweeper's clock for a lost message)
    session.execute(sa.update(Item).where(Item.id.in_(held)).values(updated_at=now),
                    execution_options={"synchronize_session": False})
    return held


def llm_usage_by_source(*, session: Session, job_id: uuid.UUID) -> dict[str, dict[str, float]]:
    """Per source: requests done / failed / queued / skipped and what the done ones cost."""
    usage: dict[str, dict[str, float]] = {}
    for source, status, n, cost in session.execute(
            sa.select(LlmRequest.source, LlmRequest.status, sa.func.count(),
                      sa.func.coalesce(sa.func.sum(LlmRequest.cost_usd), 0.0))
            .where(LlmRequest.job_id == job_id).group_by(LlmRequest.source, LlmRequest.status)).all():
        entry = usage.setdefault(source, {str(s): 0 for s in RequestStatus} | {"cost_usd": 0.0})
        entry[status] = int(n)
        entry["cost_usd"] += float(cost)
    return usage


# --- the answer cache ---------------------------------------------------------------------------

_CACHE_COLUMNS = ("scores", "method", "tokens_in", "tokens_out", "cost_usd", "latency_ms", "error")


class SqlAnswerCache:
    """``shared.llm.cache.AnswerCache`` on the ``llm_scores`` table of ``database_url``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def lookup(self, keys: Sequence[str]) -> dict[str, dict]:
        with session_for(self.database_url) as session, session.begin():
            return lookup_answers(session=session, keys=keys)

    def store(self, rows: Sequence[dict]) -> None:
        with session_for(self.database_url) as session, session.begin():
            store_answers(session=session, rows=rows)


def lookup_answers(*, session: Session, keys: Sequence[str], count_hits: bool = True) -> dict[str, dict]:
    """Usable cached answers (failures are not reused) by cache key, as column dicts; counts a hit for each."""
    if not keys:
        return {}
    rows = session.scalars(sa.select(LlmScore).where(LlmScore.cache_key.in_(set(keys)),
                                                     LlmScore.method != ScoreMethod.FAILED)).all()
    found = {row.cache_key: {c: getattr(row, c) for c in _CACHE_COLUMNS} for row in rows}
    if found and count_hits:
        session.execute(sa.update(LlmScore).where(LlmScore.cache_key.in_(list(found))).values(hits=LlmScore.hits + 1))
    return found


def recorded_answers(*, session: Session, keys: Sequence[str]) -> dict[str, dict]:
    """Every recorded answer among ``keys``, failures included, as column dicts plus ``created_at``;
    a read for reports: no hit is counted."""
    if not keys:
        return {}
    rows = session.scalars(sa.select(LlmScore).where(LlmScore.cache_key.in_(set(keys)))).all()
    return {row.cache_key: {c: getattr(row, c) for c in (*_CACHE_COLUMNS, "created_at")} for row in rows}


def job_requests(*, session: Session, job_id: uuid.UUID, source: str) -> list[dict]:
    """The job's ``source`` requests in item order: position, the item's text, status, cost (what the
    answer cost this job: 0 when it came from the cache) and when the request was made."""
    rows = session.execute(
        sa.select(Item.position, Item.text, LlmRequest.status, LlmRequest.cost_usd, LlmRequest.created_at)
        .join(Item, Item.id == LlmRequest.item_id)
        .where(LlmRequest.job_id == job_id, LlmRequest.source == source).order_by(Item.position)).all()
    return [{"position": r[0], "text": r[1], "status": r[2], "cost_usd": r[3], "created_at": r[4]} for r in rows]


def store_answers(*, session: Session, rows: Sequence[dict]) -> None:
    """Upsert answer rows (every ``llm_scores`` column but ``id``/``hits``); a new answer replaces only a
    recorded failure, never a good answer."""
    if not rows:
        return
    now = utcnow()
    rows = [{**row, "hits": 0, "created_at": now} for row in rows]
    stmt = dialect_insert(session)(LlmScore)
    updatable = (*_CACHE_COLUMNS, "created_at")
    stmt = stmt.on_conflict_do_update(index_elements=["cache_key"], set_={c: stmt.excluded[c] for c in updatable},
                                      where=LlmScore.method == ScoreMethod.FAILED)
    session.execute(stmt, rows)


def answer_stats(*, session: Session) -> list[dict]:
    """Per provider and model: calls, failures, cache hits and hit rate, tokens, cost, latency percentiles."""
    groups = session.execute(sa.select(LlmScore.provider, LlmScore.model).distinct()
                             .order_by(LlmScore.provider, LlmScore.model)).all()
    report = []
    for provider, model in groups:
        rows = session.execute(sa.select(LlmScore.method, LlmScore.hits, LlmScore.tokens_in, LlmScore.tokens_out,
                                         LlmScore.cost_usd, LlmScore.latency_ms)
                               .where(LlmScore.provider == provider, LlmScore.model == model)).all()
        calls = len(rows)
        hits = sum(r.hits for r in rows)
        latencies = np.array([r.latency_ms for r in rows], dtype=float)
        report.append({
            "provider": provider, "model": model, "calls": calls,
            "failed": sum(r.method == ScoreMethod.FAILED for r in rows),
            "votes": sum(r.method == ScoreMethod.VOTE for r in rows),
            "cache_hits": hits, "cache_hit_rate": hits / (hits + calls) if calls + hits else 0.0,
            "tokens_in": sum(r.tokens_in for r in rows), "tokens_out": sum(r.tokens_out for r in rows),
            "cost_usd": round(sum(r.cost_usd for r in rows), 6),
            **{f"latency_ms_p{p}": round(float(np.percentile(latencies, p)), 1) for p in (50, 90, 99)},
        })
    return report
