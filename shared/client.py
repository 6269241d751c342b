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

from sqlalchemy.exc import IntegrityError

from shared.db.engine import ensure_schema, session_for
from shared.db.jobs import (
    create_job,
    get_job,
    job_for_idempotency_key,
    job_result_rows,
    lease_items,
    pending_item_batches,
)
from shared.db.models import Classifier
from shared.db.registry import find_classifier
from shared.errors import InputError, JobTimeout
from shared.llm.prompts import LabelSet
from shared.llm.sources import source_spec
from shared.schemas import CLASSIFIER_MODES, ItemResult, JobProgress
from shared.settings import Settings, get_settings


def first_task(mode: str, source: str | None) -> str:
    """The task that starts a job of ``mode``: embedding, or the LLM source's scoring task."""
    if mode == "llm":
        from workers.llm_api import LLM_API_TASK
        from workers.llm_local import LLM_LOCAL_TASK

        return {"local": LLM_LOCAL_TASK, "api": LLM_API_TASK}[source]
    from workers.embed import EMBED_TASK

    return EMBED_TASK


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
               idempotency_key: str | None = None) -> uuid.UUID:
        """Store a job and its items in one transaction, then enqueue them in batches; the job id.

        Re-submitting with the same ``idempotency_key`` returns the first job and enqueues nothing.
        """
        if mode not in CLASSIFIER_MODES:
            raise InputError(f"mode {mode!r} is not available; choose one of: {', '.join(CLASSIFIER_MODES)} "
                             "(or submit_llm for the LLM alone)")
        return self._submit(texts, classifier_ref=classifier, mode=mode, key=idempotency_key)

    def submit_llm(self, texts: Sequence[str], labels: LabelSet, *, multi_label: bool = False, source: str = "local",
                   idempotency_key: str | None = None) -> uuid.UUID:
        """A job answered by one LLM source alone (``local`` or ``api``): its scores become the predictions."""
        source_spec(self.settings, source)  # refuse an unconfigured source before anything is stored
        job_labels = {"names": list(labels.names), "descriptions": list(labels.descriptions)}
        return self._submit(texts, classifier_ref=None, mode="llm", key=idempotency_key, labels=job_labels,
                            multi_label=multi_label, source=source)

    def _submit(self, texts, *, classifier_ref: str | None, mode: str, key: str | None, **llm) -> uuid.UUID:
        if isinstance(texts, (str, bytes)):
            raise InputError("texts must be a list of strings, not a single string: wrap it as [text]")
        texts = list(texts)
        if not texts:
            raise InputError("no texts to classify: submit at least one")
        app = self.app  # start the embedded worker before the job exists
        try:
            job_id, batches = self._store_job(texts, classifier_ref, mode, key, llm)
        except IntegrityError:
            if not key:
                raise
            with session_for(self._url) as session:  # a concurrent submit with this key won
                clf = find_classifier(session=session, ref=classifier_ref) if classifier_ref else None
                job_id, batches = job_for_idempotency_key(session, key, clf, texts).id, []
        task = first_task(mode, llm.get("source"))
        for batch in batches:  # only after commit, so a worker always finds the rows
            app.send_task(task, args=[str(job_id), batch])
        return job_id

    def _store_job(self, texts, classifier_ref: str | None, mode: str, key: str | None,
                   llm: dict) -> tuple[uuid.UUID, list[list[int]]]:
        with session_for(self._url) as session, session.begin():
            clf = find_classifier(session=session, ref=classifier_ref) if classifier_ref else None
            job, created = create_job(session=session, classifier=clf, texts=texts, mode=mode, idempotency_key=key,
                                      max_text_chars=self.settings.max_text_chars, labels=llm.get("labels"),
                                      multi_label=llm.get("multi_label"), llm_source=llm.get("source"))
            if not created:
                return job.id, []
            per_task = self.settings.llm_batch_items if mode == "llm" else self.settings.embed_items_per_task
            batches = pending_item_batches(session=session, job_id=job.id, items_per_batch=per_task)
            for batch in batches:
                lease_items(session=session, item_ids=batch, lease_seconds=self.settings.item_lease_seconds)
            return job.id, batches

    def progress(self, job_id: uuid.UUID | str) -> JobProgress:
        """Counts and status of a job, from the database."""
        with session_for(self._url) as session:
            job = get_job(session=session, job_id=job_id)
            clf = session.get(Classifier, job.classifier_id) if job.classifier_id else None
            name = f"{clf.name}@{clf.version}" if clf else f"llm:{job.llm_source}"
            return JobProgress(job_id=job.id, classifier=name, mode=job.mode, status=job.status,
                               n_items=job.n_items, n_done=job.n_done, n_failed=job.n_failed,
                               created_at=job.created_at, finished_at=job.finished_at)

    def wait(self, job_id: uuid.UUID | str, *, timeout: float | None = None, poll: float = 0.1,
             on_progress: Callable[[JobProgress], None] | None = None) -> JobProgress:
        """Block until the job completes; ``on_progress`` sees each poll. Raises :class:`JobTimeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self.progress(job_id)
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
                    latency_ms=prediction.latency_ms if prediction else None,
                    error=item.error,
                ))
            return results

    def classify(self, texts: Sequence[str], classifier: str, mode: str = "fast", *, timeout: float | None = None,
                 on_progress: Callable[[JobProgress], None] | None = None) -> list[ItemResult]:
        """submit + wait + results in one call."""
        job_id = self.submit(texts, classifier, mode)
        self.wait(job_id, timeout=timeout, on_progress=on_progress)
        return self.results(job_id)
