"""What every stage does first: find the job, take the items it was sent that still need it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from shared.db.common import ClaimedItem, new_claim_token
from shared.db.engine import relax_commit, session_for
from shared.db.items import claim_job_items
from shared.db.jobs import as_job_id, job_with_classifier
from shared.db.leases import renew_item_claim, renew_request_claim
from shared.db.llm import claim_requests
from shared.db.models import Classifier, Job
from shared.llm.prompts import LabelSet
from shared.service.heartbeat import LeaseHeartbeat
from shared.settings import Settings


@dataclass(frozen=True)
class StageClaim:
    """What a stage holds: the job, its classifier (None for an LLM-only job), the items now leased
    to it, and the token that fences its writes (a write naming an older claim's token lands nowhere)."""

    job: Job
    classifier: Classifier | None
    items: list[ClaimedItem]
    token: int
    source: str | None = None

    def heartbeat(self, settings: Settings) -> LeaseHeartbeat:
        """Renews this claim's lease while the stage works: ``with claim.heartbeat(settings): ...``."""
        ids = [item.id for item in self.items]
        if self.source is None:
            renew = functools.partial(_renew_items, ids=ids, token=self.token)
        else:
            renew = functools.partial(_renew_requests, ids=ids, source=self.source, token=self.token)
        return LeaseHeartbeat(settings, renew)


def _renew_items(session, lease, *, ids, token) -> int:
    return renew_item_claim(session=session, item_ids=ids, token=token, lease=lease)


def _renew_requests(session, lease, *, ids, source, token) -> int:
    return renew_request_claim(session=session, item_ids=ids, source=source, token=token, lease=lease)


def claim(settings: Settings, job_id: str, item_ids: list[int], source: str | None = None) -> StageClaim:
    """Claim the items among ``item_ids`` that need this stage and no live worker holds: pending
    items for the encoder, or items with a queued request for the ``source`` LLM."""
    token = new_claim_token()
    with session_for(settings.effective_database_url) as session, session.begin():
        if source is None:  # the hot path: one statement on Postgres
            job, classifier, claimed = claim_job_items(session=session, job_id=as_job_id(job_id), item_ids=item_ids,
                                                       lease_seconds=settings.item_lease_seconds, token=token)
            return StageClaim(job, classifier, claimed, token)
        relax_commit(session)  # a claim lost with a crashed Postgres only forgets an attempt: no fsync wait
        job, classifier = job_with_classifier(session=session, job_id=job_id)
        claimed = claim_requests(session=session, item_ids=item_ids, source=source,
                                 lease_seconds=settings.item_lease_seconds, token=token)
    return StageClaim(job, classifier, claimed, token, source)


def job_label_set(job: Job, classifier: Classifier | None = None) -> tuple[LabelSet, bool]:
    """The label set and single/multi-label flag the LLM is asked about: the classifier's, or the
    LLM-only job's own."""
    if classifier is not None:
        return LabelSet(names=tuple(classifier.labels)), bool(classifier.multi_label)
    return (LabelSet(names=tuple(job.labels["names"]), descriptions=tuple(job.labels.get("descriptions") or ())),
            bool(job.multi_label))
