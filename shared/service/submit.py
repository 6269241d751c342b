"""Submitting a job: check its texts and modes, plan its tiers, write it in one transaction, then
send its messages. Every way in (the Python client, the HTTP API through it, the broker's
``fusionq.submit`` task) goes through :func:`submit_job`.

Messages are sent only after the commit, so a worker always finds the rows it is told about.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from shared.db.engine import session_for
from shared.db.items import refresh_item_statistics
from shared.db.jobs import NewItem, create_job, job_for_idempotency_key
from shared.db.models import Classifier
from shared.db.registry import find_classifier
from shared.dispatch import Dispatcher, TaskName, chunks
from shared.errors import BrokerUnavailable, InputError
from shared.llm.prompts import PROMPT_VERSION
from shared.llm.sources import configured_sources
from shared.service.policy import Budget, check_mode, parse_tiers, resolve_tiers
from shared.settings import Settings
from shared.textio import text_problem
from shared.vocab import Mode

# What is kept of a text refused at submit: enough for the caller to recognise it, never megabytes.
REFUSED_TEXT_PREFIX_CHARS = 1000
# A job at least this large refreshes the items table's statistics before its messages go out
# (shared.db.items.refresh_item_statistics): ~0.1-0.3 s, against minutes of claims planned on stale ones.
ANALYZE_AFTER_ITEMS = 5_000

Sends = list[tuple[str, list[int]]]
log = logging.getLogger(__name__)


def text_list(texts) -> list[str]:
    """The texts of a job as a list, refusing a bare string and an empty list."""
    if isinstance(texts, (str, bytes)):
        raise InputError("texts must be a list of strings, not a single string: wrap it as [text]")
    texts = list(texts)
    if not texts:
        raise InputError("no texts to classify: submit at least one")
    return texts


def submit_job(settings: Settings, dispatcher: Dispatcher, texts: Sequence[str], classifier: str, mode: str = Mode.FAST,
               *, idempotency_key: str | None = None, item_modes: Sequence[str | None] | None = None,
               budget_share: float | None = None, budget_items: int | None = None, budget_usd: float | None = None,
               notify: dict | None = None, on_stored: Callable[[uuid.UUID], None] | None = None) -> uuid.UUID:
    """Check a classification job, store it and send its messages; its id (see ``FusionqClient.submit``).

    ``on_stored`` runs between the commit and the first message (the client subscribes to the job's
    completion there, so its end cannot go unseen)."""
    mode = check_mode(mode)
    texts = text_list(texts)
    if item_modes is not None:
        item_modes = list(item_modes)
        if len(item_modes) != len(texts):
            raise InputError(f"item_modes has {len(item_modes)} entries for {len(texts)} texts: give one per text (None keeps the job's)")
        item_modes = [None if own is None else check_mode(own, where=f"item_modes[{position}]")
                      for position, own in enumerate(item_modes)]
    used = {mode} | {m for m in item_modes or () if m}
    budget = Budget.of(len(texts), share=budget_share, items=budget_items, usd=budget_usd)
    if not budget.unlimited and Mode.AUTO not in used:
        raise InputError("a budget caps auto escalation; this job has no item in mode auto "
                         "(full and llm modes ask the LLM for every item by definition)")
    return store_and_send(settings, dispatcher, texts, classifier_ref=classifier, mode=mode, key=idempotency_key,
                          on_stored=on_stored, item_modes=item_modes, used_modes=used, budget=budget,
                          notify=notify or None)


def store_and_send(settings: Settings, dispatcher: Dispatcher, texts: list[str], *, classifier_ref: str | None,
                   mode: str, key: str | None, on_stored: Callable[[uuid.UUID], None] | None = None,
                   **job) -> uuid.UUID:
    """Store the job (:func:`store_job`), then send its messages; a broker failure after the commit
    says the job is stored and that the sweeper will send what is missing."""
    job_id, sends = store_job(settings, texts, classifier_ref=classifier_ref, mode=mode, key=key, **job)
    if sends and len(texts) >= ANALYZE_AFTER_ITEMS:
        refresh_statistics(settings)
    if sends and on_stored is not None:
        on_stored(job_id)
    for sent, (task, batch) in enumerate(sends):
        try:
            dispatcher.send(task, str(job_id), batch)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(
                f"job {job_id} is stored, but {len(sends) - sent} of its {len(sends)} messages were not enqueued: "
                f"{exc}. Nothing is lost: once the broker is back, the sweeper finds them missing there and re-sends "
                f"them within ~{settings.item_lease_seconds + settings.sweep_interval:.0f}s "
                f"(FUSIONQ_ITEM_LEASE_SECONDS + FUSIONQ_SWEEP_INTERVAL); follow it with `fusionq job {job_id}`"
            ) from None
    return job_id


def refresh_statistics(settings: Settings) -> None:
    """Fresh planner statistics after a large insert; a failure is logged, never the submit's."""
    try:
        with session_for(settings.effective_database_url) as session, session.begin():
            refresh_item_statistics(session=session)
    except SQLAlchemyError as exc:
        log.warning("could not refresh the items table's statistics after a large job (%s): claims may be "
                    "planned on stale ones until autovacuum runs", exc)


def new_items(texts: Sequence[str], *, max_chars: int, item_modes: Sequence[str | None] | None = None) -> list[NewItem]:
    """The job's items as stored: a text that cannot be classified keeps a bounded, storable prefix and its reason."""
    items = []
    for position, text in enumerate(texts):
        problem = text_problem(text, max_chars=max_chars)
        safe = text if isinstance(text, str) else ""
        if problem:
            safe = safe[:REFUSED_TEXT_PREFIX_CHARS].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        own = item_modes[position] if item_modes is not None else None
        items.append(NewItem(text=safe, mode=own, error=problem))
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
            row, created, waiting = create_job(session=session, classifier=clf, items=items, mode=mode,
                                               idempotency_key=key, budget_items=budget.items, budget_usd=budget.usd,
                                               **job)
            if not created:
                return row.id, []
            return row.id, [(task, batch) for task, ids in waiting.items() for batch in chunks(
                ids, settings.embed_items_per_task if task == TaskName.EMBED else settings.llm_batch_items)]
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
