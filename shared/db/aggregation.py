"""The aggregator's read model: an item with its features and its LLM requests, in one read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Item, ItemFeatures, Job, LlmRequest
from shared.vocab import WAITING_FOR_AGGREGATOR, RequestStatus


@dataclass(frozen=True)
class RequestState:
    source: str
    tier: int
    reason: str
    status: str
    scores: list | None
    method: str | None
    error: str | None


@dataclass(frozen=True)
class AggregationInput:
    """An item the aggregator may finish: its own mode, features (if any) and LLM requests."""

    item_id: int
    mode: str | None
    vector: bytes | None
    dim: int | None
    job_created_at: dt.datetime
    requests: dict[str, RequestState]

    @property
    def waiting(self) -> bool:
        """True while an LLM answer is still to come."""
        return any(r.status == RequestStatus.QUEUED for r in self.requests.values())


def load_aggregation_inputs(*, session: Session, item_ids: Sequence[int], encoder_key: str | None) -> list[AggregationInput]:
    """Unfinished items among ``item_ids`` whose features are in (or that need none), with their requests."""
    feature_join = sa.and_(ItemFeatures.item_id == Item.id, ItemFeatures.encoder_key == (encoder_key or ""))
    rows = session.execute(
        sa.select(Item.id, Item.mode, ItemFeatures.vector, ItemFeatures.dim, Job.created_at)
        .outerjoin(ItemFeatures, feature_join).join(Job, Job.id == Item.job_id)
        .where(Item.id.in_(list(item_ids)), Item.status.in_(WAITING_FOR_AGGREGATOR))
        .order_by(Item.id)
    ).all()
    requests: dict[int, dict[str, RequestState]] = {}
    if rows:
        for r in session.scalars(sa.select(LlmRequest).where(LlmRequest.item_id.in_([row[0] for row in rows]))):
            requests.setdefault(r.item_id, {})[r.source] = RequestState(
                source=r.source, tier=r.tier, reason=r.reason, status=r.status, scores=r.scores, method=r.method,
                error=r.error)
    return [AggregationInput(item_id=r[0], mode=r[1], vector=r[2], dim=r[3], job_created_at=r[4],
                             requests=requests.get(r[0], {})) for r in rows]
