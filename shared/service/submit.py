"""Storing a job: check its texts and modes, plan its tiers, write it in one transaction.

The caller (the client) sends the returned messages only after this commits, so a worker always
finds the rows it is told about.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError

from shared.db.engine import session_for
from shared.db.items import pending_item_batches
from shared.db.jobs import NewItem, create_job, job_for_idempotency_key
from shared.db.llm import queued_request_batches
from shared.db.models import Classifier
from shared.db.registry import find_classifier
from shared.dispatch import LLM_TASKS, TaskName
from shared.errors import InputError
from shared.llm.prompts import PROMPT_VERSION
from shared.llm.sources import configured_sources
from shared.service.policy import Budget, parse_tiers, resolve_tiers
from shared.settings import Settings
from shared.textio import text_hash, text_problem
from shared.vocab import Mode

# What is kept of a text refused at submit: enough for the caller to recognise it, never megabytes.
REFUSED_TEXT_PREFIX_CHARS = 1000

Sends = list[tuple[str, list[int]]]


def new_items(texts: Sequence[str], *, max_chars: int, item_modes: Sequence[str | None] | None = None) -> list[NewItem]:
    """The job's items as stored: a text that cannot be classified keeps a bounded, storable prefix and its reason."""
    items = []
    for position, text in enumerate(texts):
        problem = text_problem(text, max_chars=max_chars)
        safe = text if isinstance(text, str) else ""
        if problem:
            safe = safe[:REFUSED_TEXT_PREFIX_CHARS].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        own = item_modes[position] if item_modes is not None else None
        items.append(NewItem(text=safe, text_hash=text_hash(safe), mode=own, error=problem))
    return items


def store_job(settings: Settings, texts: list[str], *, classifier_ref: str | None, mode: str, key: str | None,
              item_modes: Sequence[str | None] | None = None, used_modes: set[str] | None = None,
              budget: Budget | None = None, **job) -> tuple[uuid.UUID, Sends]:
    """Store the job (or find the one ``key`` names); (job id, messages to send after commit)."""
    url = settings.effective_database_url
    items = new_items(texts, max_chars=settings.max_text_chars, item_modes=item_modes)
    try:
        with session_for(url) as session, session.begin():
            clf = find_classifier(session=session, ref=classifier_ref) if classifier_ref else None
            budget = budget or Budget()
            if clf is not None:
                job.update(escalation_plan(settings, clf, used_modes or {mode}))
            row, created = create_job(session=session, classifier=clf, items=items, mode=mode, idempotency_key=key,
                                      budget_items=budget.items, budget_usd=budget.usd, **job)
            if not created:
                return row.id, []
            sends: Sends = [(TaskName.EMBED, batch) for batch in pending_item_batches(
                session=session, job_id=row.id, items_per_batch=settings.embed_items_per_task)]
            for source, batches in queued_request_batches(session=session, job_id=row.id,
                                                          items_per_batch=settings.llm_batch_items).items():
                sends += [(LLM_TASKS[source], batch) for batch in batches]
            return row.id, sends
    except IntegrityError:
        if not key:
            raise
        with session_for(url) as session:  # a concurrent submit with this key won
            clf = find_classifier(session=session, ref=classifier_ref) if classifier_ref else None
            return job_for_idempotency_key(session, key, clf, len(texts)).id, []


def escalation_plan(settings: Settings, clf: Classifier, used_modes: set[str]) -> dict:
    """The job's tiers (auto/full) and LLM-alone source (llm) for this classifier, or a clear refusal."""
    info = (clf.metrics or {}).get("serving") or {}
    configured = configured_sources(settings)
    wanted = parse_tiers(settings.escalation_tiers)
    tiers = resolve_tiers(wanted, classifier_sources=info.get("llm_sources") or [], configured_sources=configured,
                          default_threshold=info.get("escalation_threshold"))
    needs_tiers = sorted(used_modes & {Mode.AUTO, Mode.FULL})
    if needs_tiers and not tiers:
        raise InputError(
            f"mode {needs_tiers[0]} needs an LLM tier that classifier {clf.name}@{clf.version} was trained with: it "
            f"takes LLM sources {info.get('llm_sources') or 'none'}, FUSIONQ_ESCALATION_TIERS is "
            f"{settings.escalation_tiers!r} and the configured LLMs are {[str(s) for s in configured] or 'none'}. "
            "Train with --llm local (or api), set FUSIONQ_LLM_LOCAL / FUSIONQ_LLM_API, or use mode fast")
    trained_with = info.get("prompt_version")
    if tiers and needs_tiers and trained_with not in (None, PROMPT_VERSION):
        raise InputError(
            f"mode {needs_tiers[0]}: classifier {clf.name}@{clf.version} was trained on LLM answers to prompt version "
            f"{trained_with!r} and this fusionq asks {PROMPT_VERSION!r}, so their scores cannot be fused; retrain it, "
            "or use mode fast")
    alone = next((t.source for t in wanted if t.source in configured), None)
    if Mode.LLM in used_modes and alone is None:
        raise InputError("mode llm needs an LLM: set FUSIONQ_LLM_LOCAL or FUSIONQ_LLM_API "
                         f"(tiers {settings.escalation_tiers!r})")
    return {"tiers": [t.as_dict() for t in tiers], "llm_source": alone if Mode.LLM in used_modes else None}
