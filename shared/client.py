"""Python client: submit texts to a classifier, follow progress, wait, read results.

>>> with FusionqClient() as client:                     # doctest: +SKIP
...     job_id = client.submit(["Stocks fell sharply"], classifier="news")
...     client.wait(job_id)
...     [r.labels for r in client.results(job_id)]
[['business']]

With no broker configured the client also runs the embedded worker in this process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.db.engine import ensure_schema, session_for
from shared.db.jobs import (
    create_job,
    get_job,
    job_for_idempotency_key,
    job_result_rows,
    llm_usage_by_source,
    pending_item_batches,
    queued_request_batches,
)
from shared.db.models import Classifier, Item, Prediction
from shared.db.registry import find_classifier
from shared.errors import InputError, JobTimeout
from shared.llm.prompts import LabelSet
from shared.llm.sources import configured_sources, source_spec
from shared.schemas import ItemResult, JobProgress, JobStats, TierStats
from shared.serving import Budget, check_mode, parse_tiers, resolve_tiers
from shared.settings import Settings, get_settings
from shared.task_names import EMBED_TASK, LLM_TASKS


def _text_list(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise InputError("texts must be a list of strings, not a single string: wrap it as [text]")
    texts = list(texts)
    if not texts:
        raise InputError("no texts to classify: submit at least one")
    return texts


class FusionqClient:
    """A caller's handle on fusionq. Close it (or use ``with``) to stop an embedded worker."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._url = self.settings.effective_database_url
        ensure_schema(self._url)
        self._app = None
        self._worker = None

    @property
    def app(self):
        """The Celery app used to enqueue; starts the in-process worker in embedded mode."""
        if self._app is None:
            from workers.app import create_app

            self._app = create_app(self.settings)
            if self.settings.embedded:
                from workers.embedded import EmbeddedWorker

                self._worker = EmbeddedWorker(self._app).start()
        return self._app

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __enter__(self) -> "FusionqClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, texts: Sequence[str], classifier: str, mode: str = "fast", *,
               idempotency_key: str | None = None, item_modes: Sequence[str | None] | None = None,
               budget_share: float | None = None, budget_items: int | None = None,
               budget_usd: float | None = None) -> uuid.UUID:
        """Store a job and its items in one transaction, then enqueue them in batches; the job id.

        ``mode``: fast (encoder only), auto (escalate low-confidence items up the LLM tiers),
        full (every item gets every tier's LLM scores, fetched beside the encoder), or llm (the
        first tier's LLM alone). ``item_modes`` overrides the mode per item (None keeps the job's).
        A budget caps what auto escalation may spend: a share or a count of the job's items and/or
        dollars; items that would escalate past it finish on the fast path, flagged
        ``budget_exhausted``. Re-submitting with the same ``idempotency_key`` returns the first
        job and enqueues nothing.
        """
        check_mode(mode)
        texts = _text_list(texts)
        if item_modes is not None:
            item_modes = list(item_modes)
            if len(item_modes) != len(texts):
                raise InputError(f"item_modes has {len(item_modes)} entries for {len(texts)} texts: give one per text (None keeps the job's mode)")
            for position, own in enumerate(item_modes):
                if own is not None:
                    check_mode(own, where=f"item_modes[{position}]")
        used = {mode} | {m for m in item_modes or () if m}
        budget = Budget.of(len(texts), share=budget_share, items=budget_items, usd=budget_usd)
        if not budget.unlimited and "auto" not in used:
            raise InputError("a budget caps auto escalation; this job has no item in mode auto "
                             "(full and llm modes ask the LLM for every item by definition)")
        return self._submit(texts, classifier_ref=classifier, mode=mode, key=idempotency_key, item_modes=item_modes,
                            used_modes=used, budget=budget)

    def submit_llm(self, texts: Sequence[str], labels: LabelSet, *, multi_label: bool = False, source: str = "local",
                   idempotency_key: str | None = None) -> uuid.UUID:
        """A job answered by one LLM source alone (``local`` or ``api``): its scores become the predictions."""
        source_spec(self.settings, source)  # refuse an unconfigured source before anything is stored
        job_labels = {"names": list(labels.names), "descriptions": list(labels.descriptions)}
        return self._submit(_text_list(texts), classifier_ref=None, mode="llm", key=idempotency_key,
                            labels=job_labels, multi_label=multi_label, llm_source=source)

    def _submit(self, texts: list[str], *, classifier_ref: str | None, mode: str, key: str | None, **job) -> uuid.UUID:
        app = self.app  # start the embedded worker before the job exists
        try:
            job_id, sends = self._store_job(texts, classifier_ref, mode, key, job)
        except IntegrityError:
            if not key:
                raise
            with session_for(self._url) as session:  # a concurrent submit with this key won
                clf = find_classifier(session=session, ref=classifier_ref) if classifier_ref else None
                job_id, sends = job_for_idempotency_key(session, key, clf, texts).id, []
        for task, batch in sends:  # only after commit, so a worker always finds the rows
            app.send_task(task, args=[str(job_id), batch])
        return job_id

    def _store_job(self, texts: list[str], classifier_ref: str | None, mode: str, key: str | None,
                   job: dict) -> tuple[uuid.UUID, list[tuple[str, list[int]]]]:
        with session_for(self._url) as session, session.begin():
            clf = find_classifier(session=session, ref=classifier_ref) if classifier_ref else None
            job = dict(job)
            used_modes = job.pop("used_modes", None)
            budget = job.pop("budget", None) or Budget()
            if clf is not None:
                job.update(self._escalation_plan(clf, used_modes))
            row, created = create_job(session=session, classifier=clf, texts=texts, mode=mode, idempotency_key=key,
                                      max_text_chars=self.settings.max_text_chars,
                                      lease_seconds=self.settings.item_lease_seconds,
                                      budget_items=budget.items, budget_usd=budget.usd, **job)
            if not created:
                return row.id, []
            sends = [(EMBED_TASK, batch) for batch in pending_item_batches(
                session=session, job_id=row.id, items_per_batch=self.settings.embed_items_per_task)]
            for source, batches in queued_request_batches(session=session, job_id=row.id,
                                                          items_per_batch=self.settings.llm_batch_items).items():
                sends += [(LLM_TASKS[source], batch) for batch in batches]
            return row.id, sends

    def _escalation_plan(self, clf: Classifier, used_modes: set[str]) -> dict:
        """The job's tiers (auto/full) and LLM-alone source (llm) for this classifier, or a clear refusal."""
        info = (clf.metrics or {}).get("serving") or {}
        configured = configured_sources(self.settings)
        wanted = parse_tiers(self.settings.escalation_tiers)
        tiers = resolve_tiers(wanted, classifier_sources=info.get("llm_sources") or [], configured_sources=configured,
                              default_threshold=info.get("escalation_threshold"))
        needs_tiers = sorted(used_modes & {"auto", "full"})
        if needs_tiers and not tiers:
            raise InputError(
                f"mode {needs_tiers[0]} needs an LLM tier that classifier {clf.name}@{clf.version} was trained with: it "
                f"takes LLM sources {info.get('llm_sources') or 'none'}, FUSIONQ_ESCALATION_TIERS is "
                f"{self.settings.escalation_tiers!r} and the configured LLMs are {configured or 'none'}. Train with "
                "--llm local (or api), set FUSIONQ_LLM_LOCAL / FUSIONQ_LLM_API, or use mode fast")
        alone = next((t.source for t in wanted if t.source in configured), None)
        if "llm" in used_modes and alone is None:
            raise InputError("mode llm needs an LLM: set FUSIONQ_LLM_LOCAL or FUSIONQ_LLM_API "
                             f"(tiers {self.settings.escalation_tiers!r})")
        return {"tiers": [t.as_dict() for t in tiers], "llm_source": alone if "llm" in used_modes else None}

    def progress(self, job_id: uuid.UUID | str) -> JobProgress:
        """Counts and status of a job, from the database."""
        with session_for(self._url) as session:
            job = get_job(session=session, job_id=job_id)
            clf = session.get(Classifier, job.classifier_id) if job.classifier_id else None
            name = f"{clf.name}@{clf.version}" if clf else f"llm:{job.llm_source}"
            return JobProgress(job_id=job.id, classifier=name, mode=job.mode, status=job.status,
                               n_items=job.n_items, n_done=job.n_done, n_failed=job.n_failed,
                               created_at=job.created_at, finished_at=job.finished_at)

    def stats(self, job_id: uuid.UUID | str) -> JobStats:
        """Escalations per tier, what they cost, the budget, and how many answers carry each flag."""
        with session_for(self._url) as session:
            job = get_job(session=session, job_id=job_id)
            usage = llm_usage_by_source(session=session, job_id=job.id)
            thresholds = {t["source"]: t["threshold"] for t in job.tiers or []}
            sources = list(thresholds) + [s for s in usage if s not in thresholds]
            tiers = [TierStats(source=s, threshold=thresholds.get(s), **{k: v for k, v in usage.get(s, {}).items()})
                     for s in sources]
            flags: dict[str, int] = {}
            for item_flags in session.scalars(sa.select(Prediction.flags).join(Item, Item.id == Prediction.item_id)
                                              .where(Item.job_id == job.id)):
                for flag in item_flags or ():
                    flags[flag] = flags.get(flag, 0) + 1
            return JobStats(job_id=job.id, mode=job.mode, status=job.status, n_items=job.n_items, n_done=job.n_done,
                            n_failed=job.n_failed, n_escalated=job.n_escalated, budget_items=job.budget_items,
                            budget_usd=job.budget_usd, llm_cost_usd=sum(t.cost_usd for t in tiers), tiers=tiers,
                            flags=flags)

    def wait(self, job_id: uuid.UUID | str, *, timeout: float | None = None, poll: float = 0.1,
             on_progress: Callable[[JobProgress], None] | None = None) -> JobProgress:
        """Block until the job completes; ``on_progress`` sees each poll. Raises :class:`JobTimeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                progress = self.progress(job_id)
            except OperationalError:  # the database is restarting: the workers ride it out, so does the caller
                if deadline is not None and time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
                continue
            if on_progress:
                on_progress(progress)
            if progress.finished:
                return progress
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(
                    f"job {job_id} not finished after {timeout:.0f}s ({progress.n_terminal}/{progress.n_items} items); "
                    "are workers running for the embed and fusion queues?"
                )
            time.sleep(poll)

    def results(self, job_id: uuid.UUID | str) -> list[ItemResult]:
        """One result per submitted text, in submission order."""
        with session_for(self._url) as session:
            job = get_job(session=session, job_id=job_id)
            labels = session.get(Classifier, job.classifier_id).labels if job.classifier_id else job.labels["names"]
            results = []
            for item, prediction in job_result_rows(session=session, job_id=job.id):
                results.append(ItemResult(
                    position=item.position, status=item.status,
                    labels=prediction.labels if prediction else [],
                    probabilities=dict(zip(labels, prediction.probabilities)) if prediction else {},
                    confidence=prediction.confidence if prediction else None,
                    signals=prediction.signals if prediction else [],
                    flags=prediction.flags if prediction else [],
                    latency_ms=prediction.latency_ms if prediction else None,
                    error=item.error,
                ))
            return results

    def classify(self, texts: Sequence[str], classifier: str, mode: str = "fast", *, timeout: float | None = None,
                 on_progress: Callable[[JobProgress], None] | None = None, **submit_options) -> list[ItemResult]:
        """submit + wait + results in one call; ``submit_options`` as for :meth:`submit` (budgets, item modes)."""
        job_id = self.submit(texts, classifier, mode, **submit_options)
        self.wait(job_id, timeout=timeout, on_progress=on_progress)
        return self.results(job_id)
