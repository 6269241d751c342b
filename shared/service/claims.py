"""What every stage does first: find the job, take the items it was sent that still need it."""

from __future__ import annotations

from shared.db.common import ClaimedItem
from shared.db.engine import relax_commit, session_for
from shared.db.items import claim_job_items
from shared.db.jobs import as_job_id, job_with_classifier
from shared.db.llm import claim_requests
from shared.db.models import Classifier, Job
from shared.llm.prompts import LabelSet
from shared.settings import Settings


def claim(settings: Settings, job_id: str, item_ids: list[int], source: str | None = None
          ) -> tuple[Job, Classifier | None, list[ClaimedItem]]:
    """(job, classifier or None, the items among ``item_ids`` now leased to this task): pending
    items for the encoder, or items with a queued request for the ``source`` LLM."""
    with session_for(settings.effective_database_url) as session, session.begin():
        if source is None:  # the hot path: one statement on Postgres
            return claim_job_items(session=session, job_id=as_job_id(job_id), item_ids=item_ids,
                                   lease_seconds=settings.item_lease_seconds)
        relax_commit(session)  # a claim lost with a crashed Postgres only forgets an attempt: no fsync wait
        job, classifier = job_with_classifier(session=session, job_id=job_id)
        claimed = claim_requests(session=session, item_ids=item_ids, source=source,
                                 lease_seconds=settings.item_lease_seconds)
    return job, classifier, claimed


def job_label_set(job: Job, classifier: Classifier | None = None) -> tuple[LabelSet, bool]:
    """The label set and single/multi-label flag the LLM is asked about: the classifier's, or the
    LLM-only job's own."""
    if classifier is not None:
        return LabelSet(names=tuple(classifier.labels)), bool(classifier.multi_label)
    return (LabelSet(names=tuple(job.labels["names"]), descriptions=tuple(job.labels.get("descriptions") or ())),
            bool(job.multi_label))
