"""Python client: submit texts to a classifier, follow progress, wait, read results.

>>> with FusionqClient() as client:                     # doctest: +SKIP
...     job_id = client.submit(["Stocks fell sharply"], classifier="news")
...     client.wait(job_id)
...     [r.labels for r in client.results(job_id)]
[['business']]

The client stores jobs in the database and hands their messages to a
:class:`~shared.dispatch.Dispatcher`. Given none, it connects the one ``workers.dispatch`` builds
for its settings on first use: a Celery app on the configured broker, or, with no broker
configured, the embedded worker in this process. Importing this module imports no Celery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy.exc import OperationalError

from shared.db.engine import ensure_schema, session_for
from shared.db.items import job_result_rows
from shared.db.jobs import as_job_id, flag_counts, get_job, job_with_classifier
from shared.db.notify import JobListener
from shared.db.llm import llm_usage_by_source
from shared.db.models import Classifier
from shared.dispatch import Dispatcher
from shared.errors import JobTimeout
from shared.llm.prompts import LabelSet
from shared.llm.sources import source_spec
from shared.schemas import ItemResult, JobProgress, JobStats, TierStats
from shared.service.submit import store_and_send, submit_job, text_list
from shared.settings import Settings, get_settings
from shared.vocab import Mode, Source


# Without progress callbacks, how often a waiting client looks at the job anyway (a NOTIFY lost with
# its connection costs at most this).
SAFETY_LOOK_SECONDS = 2.0


def finished_progress(notice: str | None) -> JobProgress | None:
    """The progress a job-completion notice carries (see ``shared.db.jobs.progress_payload``), or
    None: no notice, an empty one (the sweeper's), or anything else unreadable, and the caller looks."""
    if not notice:
        return None
    try:
        progress = JobProgress.model_validate_json(notice)
    except ValueError:
        return None
    return progress if progress.finished else None


def _job_labels(session, job) -> list[str]:
    """The classes a job answers: its classifier's, or those it was given (an LLM-only job)."""
    return list(session.get(Classifier, job.classifier_id).labels if job.classifier_id else job.labels["names"])


class FusionqClient:
    """A caller's handle on fusionq. Close it (or use ``with``) to stop an embedded worker."""

    def __init__(self, settings: Settings | None = None, *,
                 dispatcher_factory: Callable[[Settings], Dispatcher] | None = None,
                 listen_on_submit: bool = True) -> None:
        """``dispatcher_factory`` builds the dispatcher on first use (by default ``workers.dispatch.dispatcher_for``),
        so a client that only reads never starts an embedded worker. ``listen_on_submit``: subscribe
        this client's listener to each job it submits, for a later :meth:`wait` here; a server whose
        threads share one client and never call it passes False (it waits through a ``NoticeHub``),
        else every job's notice would pile up unread on the listener's connection."""
        self.settings = settings or get_settings()
        self._url = self.settings.effective_database_url
        ensure_schema(self._url)
        self._dispatcher_factory = dispatcher_factory
        self._dispatcher: Dispatcher | None = None
        self._listener = JobListener(self._url)  # connects on the first wait, kept for the client's life
        self._on_stored = self._listener.listen if listen_on_submit else None

    @property
    def dispatcher(self) -> Dispatcher:
        """Where messages go; connected on first use (an embedded worker starts here in embedded mode)."""
        if self._dispatcher is None:
            factory = self._dispatcher_factory
            if factory is None:
                from workers.dispatch import dispatcher_for as factory  # the one seam from shared into workers
            self._dispatcher = factory(self.settings)
        return self._dispatcher

    def close(self) -> None:
        self._listener.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
            self._dispatcher = None

    def __enter__(self) -> "FusionqClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, texts: Sequence[str], classifier: str, mode: str = Mode.FAST, *,
               idempotency_key: str | None = None, item_modes: Sequence[str | None] | None = None,
               budget_share: float | None = None, budget_items: int | None = None,
               budget_usd: float | None = None, notify: dict | None = None) -> uuid.UUID:
        """Store a job and its items in one transaction, then enqueue them in batches; the job id.

        ``mode``: fast (encoder only), auto (escalate low-confidence items up the LLM tiers),
        full (every item gets every tier's LLM scores, fetched beside the encoder), or llm (the
        first tier's LLM alone). ``item_modes`` overrides the mode per item (None keeps the job's).
        A budget caps what auto escalation may spend: a share or a count of the job's items and/or
        dollars; items that would escalate past it finish on the fast path, flagged
        ``budget_exhausted``. Re-submitting with the same ``idempotency_key`` returns the first
        job and enqueues nothing. ``notify``: a completion notice, ``{"task": NAME, "queue": Q}``
        (a Celery task called with the job's summary) and/or ``{"webhook": URL}`` (POSTed it),
        sent once by the sweeper within a sweep interval of the job's end.
        """
        return submit_job(self.settings, self.dispatcher, texts, classifier, mode, idempotency_key=idempotency_key,
                          item_modes=item_modes, budget_share=budget_share, budget_items=budget_items,
                          budget_usd=budget_usd, notify=notify, on_stored=self._on_stored)

    def submit_llm(self, texts: Sequence[str], labels: LabelSet, *, multi_label: bool = False,
                   source: str = Source.LOCAL, idempotency_key: str | None = None) -> uuid.UUID:
        """A job answered by one LLM source alone (``local`` or ``api``): its scores become the predictions."""
        source_spec(self.settings, source)  # refuse an unconfigured source before anything is stored
        job_labels = {"names": list(labels.names), "descriptions": list(labels.descriptions)}
        return store_and_send(self.settings, self.dispatcher, text_list(texts), classifier_ref=None, mode=Mode.LLM,
                              key=idempotency_key, on_stored=self._on_stored, labels=job_labels,
                              multi_label=multi_label, llm_source=Source(source))

    def progress(self, job_id: uuid.UUID | str) -> JobProgress:
        """Counts and status of a job, from the database."""
        with session_for(self._url) as session:
            job, clf = job_with_classifier(session=session, job_id=job_id)  # one query: wait() reads this on the hot path
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
            flags = flag_counts(session=session, job_id=job.id)
            return JobStats(job_id=job.id, mode=job.mode, status=job.status, labels=_job_labels(session, job),
                            n_items=job.n_items, n_done=job.n_done,
                            n_failed=job.n_failed, n_escalated=job.n_escalated, budget_items=job.budget_items,
                            budget_usd=job.budget_usd, llm_cost_usd=sum(t.cost_usd for t in tiers), tiers=tiers,
                            flags=flags)

    def wait(self, job_id: uuid.UUID | str, *, timeout: float | None = None, poll: float = 0.1,
             on_progress: Callable[[JobProgress], None] | None = None) -> JobProgress:
        """Block until the job completes; ``on_progress`` sees the job every ``poll`` seconds.

        On Postgres the completing worker's NOTIFY wakes this at once (no polling for the end);
        without ``on_progress`` it still looks every few seconds, in case a notification was lost
        with its connection. Raises :class:`JobTimeout`.
        """
        job_id = as_job_id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.settings.embedded:  # the workers live in this process: start them (and their sweeps) to get on
            self.dispatcher
        look_every = poll if on_progress or not self._listener.notifies else SAFETY_LOOK_SECONDS
        listener = self._listener
        notice = None
        try:
            if listener.subscribed(job_id) and on_progress is None:
                # subscribed since before its messages went out (submit): its end cannot go unseen
                notice = listener.wait_for(
                    look_every if deadline is None else max(0.0, min(look_every, deadline - time.monotonic())), job_id)
            while True:
                if (told := finished_progress(notice)) is not None:
                    return told  # the completing commit's notice carries the job's progress: no query
                listener.listen(job_id)  # before each look (a no-op once subscribed): nothing slips between
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
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise JobTimeout(
                        f"job {job_id} not finished after {timeout:.0f}s ({progress.n_terminal}/{progress.n_items} "
                        "items); are workers running for the embed and fusion queues?"
                    )
                notice = listener.wait_for(look_every if left is None else min(look_every, left), job_id)
        finally:
            listener.unlisten(job_id)

    def results(self, job_id: uuid.UUID | str, *, offset: int = 0, limit: int | None = None) -> list[ItemResult]:
        """One result per submitted text, in submission order (from position ``offset``, at most ``limit``)."""
        with session_for(self._url) as session:
            job = get_job(session=session, job_id=job_id)
            labels = _job_labels(session, job)
            results = []
            for item, prediction in job_result_rows(session=session, job_id=job.id, offset=offset, limit=limit):
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

    def classify(self, texts: Sequence[str], classifier: str, mode: str = Mode.FAST, *, timeout: float | None = None,
                 on_progress: Callable[[JobProgress], None] | None = None, **submit_options) -> list[ItemResult]:
        """submit + wait + results in one call; ``submit_options`` as for :meth:`submit` (budgets, item modes)."""
        job_id = self.submit(texts, classifier, mode, **submit_options)
        self.wait(job_id, timeout=timeout, on_progress=on_progress)
        return self.results(job_id)
