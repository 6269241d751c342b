"""The HTTP API: other services submit jobs and read results over HTTP (FastAPI; ``fusionq serve``).

Routes (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``POST /v1/jobs`` (``Idempotency-Key`` header: the same key is the same job) -> 202 with the job id
* ``GET /v1/jobs/{id}`` status, progress and stats; ``GET /v1/jobs/{id}/results`` in pages, or as
  NDJSON (``Accept: application/x-ndjson``) for large jobs
* ``POST /v1/classify``: a small batch, answered within ``timeout_s`` or 202 with the job id
* ``GET /v1/classifiers``; ``/healthz`` (the process is up), ``/readyz`` (database, broker and a
  worker on each needed queue), ``/metrics`` (Prometheus)

Every error is JSON ``{"code", "message"}``: 401 without a valid key, 404 for an unknown job or
classifier, 409 for an idempotency key reused for another request, 413 for a body over the
limit, 422 for a bad field, 503 when the database or broker is not reachable.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from shared.api.models import (
    ClassifierInfo,
    ClassifyAnswer,
    ClassifyRequest,
    JobAccepted,
    JobRequest,
    JobView,
    Problem,
    Readiness,
    ResultsPage,
)
from shared.client import SAFETY_LOOK_SECONDS, FusionqClient, finished_progress
from shared.db.engine import session_for
from shared.db.notify import IN_PROCESS_COMPLETIONS, NoticeHub
from shared.db.registry import list_classifiers
from shared.errors import (
    ClassifierNotFound,
    FusionqError,
    IdempotencyConflict,
    InputError,
    JobNotFound,
    ServiceUnavailable,
)
from shared.settings import Settings

MAX_PAGE = 1000
ERRORS = {401: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}, 413: {"model": Problem},
          422: {"model": Problem}, 503: {"model": Problem}}


def create_api(settings: Settings, client: FusionqClient | None = None) -> FastAPI:
    """The API over ``client`` (by default one on ``settings``, with the dispatcher they ask for;
    a client given here should be made with ``listen_on_submit=False``: see FusionqClient)."""
    if client is None:
        from shared.cli.commands import connect

        client = connect(settings, listen_on_submit=False)
    notices = NoticeHub(settings.effective_database_url)  # /v1/classify is told its job finished
    keys = [k.strip() for k in (settings.api_keys.get_secret_value() if settings.api_keys else "").split(",") if k.strip()]
    @asynccontextmanager
    async def lifespan(_app):
        yield
        notices.close()

    api = FastAPI(title="fusionq", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan,
                  responses={k: v for k, v in ERRORS.items() if k in (401, 422, 503)})
    api.state.client, api.state.settings = client, settings
    api.add_middleware(_BodyLimit, max_bytes=settings.api_max_body_mb * 2**20)
    _add_error_handlers(api)

    def authorized(authorization: str | None = Header(default=None, include_in_schema=False),
                   x_api_key: str | None = Header(default=None, include_in_schema=False)) -> None:
        if not keys:
            return  # no key configured: the server only listens on loopback (fusionq serve enforces it)
        given = x_api_key or (authorization[7:] if authorization and authorization.lower().startswith("bearer ") else "")
        # every key compared, each in constant time: neither the match nor its position leaks by timing
        if not any([hmac.compare_digest(given.encode(), key.encode()) for key in keys]):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")

    guarded = [Depends(authorized)]

    @api.post("/v1/jobs", status_code=202, response_model=JobAccepted, dependencies=guarded,
              responses={k: ERRORS[k] for k in (404, 409, 413)})
    def submit_job(request: JobRequest, idempotency_key: str | None = Header(default=None, max_length=200)) -> JobAccepted:
        """Store a job and enqueue it; the same ``Idempotency-Key`` returns the same job."""
        job_id = client.submit(request.texts, request.classifier, str(request.mode), idempotency_key=idempotency_key,
                               **request.submit_options())
        return _accepted(job_id, "queued")

    @api.get("/v1/jobs/{job_id}", response_model=JobView, dependencies=guarded, responses={404: ERRORS[404]})
    def get_job(job_id: uuid.UUID) -> JobView:
        """Status, progress and stats (escalations per tier, LLM cost, budget, flags)."""
        return JobView(progress=client.progress(job_id), stats=client.stats(job_id))

    @api.get("/v1/jobs/{job_id}/results", response_model=ResultsPage, dependencies=guarded,
             responses={404: ERRORS[404], 200: {"content": {"application/x-ndjson": {}}}})
    def get_results(job_id: uuid.UUID, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE),
                    accept: str | None = Header(default=None, include_in_schema=False)):
        """One result per text in submission order, a page at a time; ``Accept: application/x-ndjson``
        streams every result, one JSON line each, from ``offset``."""
        progress = client.progress(job_id)
        if accept and "application/x-ndjson" in accept:
            return StreamingResponse(_ndjson(client, job_id, offset), media_type="application/x-ndjson")
        results = client.results(job_id, offset=offset, limit=limit)
        following = offset + len(results)
        return ResultsPage(job_id=job_id, status=progress.status, offset=offset, limit=limit, n_items=progress.n_items,
                           next_offset=following if following < progress.n_items else None, results=results)

    @api.post("/v1/classify", response_model=ClassifyAnswer, dependencies=guarded,
              responses={202: {"model": JobAccepted}, **{k: ERRORS[k] for k in (404, 409, 413)}})
    def classify(request: ClassifyRequest, idempotency_key: str | None = Header(default=None, max_length=200)):
        """Classify a small batch and answer with the results, or 202 with the job id if it takes
        longer than ``timeout_s`` (its results stay readable at the results URL)."""
        job_id = client.submit(request.texts, request.classifier, str(request.mode), idempotency_key=idempotency_key,
                               **request.submit_options())
        progress = _wait(client, notices, job_id, request.timeout_s)
        if not progress.finished:
            return JSONResponse(_accepted(job_id, progress.status).model_dump(mode="json"), status_code=202)
        return ClassifyAnswer(job_id=job_id, status=progress.status, results=client.results(job_id))

    @api.get("/v1/classifiers", response_model=list[ClassifierInfo], dependencies=guarded)
    def classifiers() -> list[ClassifierInfo]:
        """Every registered classifier version."""
        with session_for(settings.effective_database_url) as session:
            return [ClassifierInfo(name=c.name, version=c.version, labels=list(c.labels), multi_label=bool(c.multi_label),
                                   created_at=c.created_at) for c in list_classifiers(session=session)]

    @api.get("/healthz")
    def healthz() -> dict:
        """The process is up (no dependency is checked)."""
        return {"ok": True}

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    def readyz():
        """Database, broker and at least one live worker on each queue a job needs."""
        checks = readiness(client, settings)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(Readiness(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        """Prometheus text format: fusionq's figures, read from Postgres and the broker at each scrape."""
        from shared.api.metrics import render

        body, content_type = render(client, settings)
        return PlainTextResponse(body, media_type=content_type)

    return api


def _accepted(job_id: uuid.UUID, status: str) -> JobAccepted:
    return JobAccepted(job_id=job_id, status=status, status_url=f"/v1/jobs/{job_id}",
                       results_url=f"/v1/jobs/{job_id}/results")


def _wait(client: FusionqClient, notices: NoticeHub, job_id: uuid.UUID, timeout: float):
    """The job's progress once it finishes or ``timeout`` passes. Told by the completing commit's
    notice (the hub listens before the first look, so nothing slips between); without Postgres, or
    while the hub's connection is down, it polls the job row: 10 ms at first, doubling to 200 ms, a
    pause that a job completed by this process's own (embedded) workers cuts short."""
    deadline, pause = time.monotonic() + timeout, 0.01
    with notices.watch(job_id) as watch:
        while True:
            seen = IN_PROCESS_COMPLETIONS.generation  # before the look: a completion after it ends the pause
            progress = client.progress(job_id)
            left = deadline - time.monotonic()
            if progress.finished or left <= 0:
                return progress
            if watch.listening.is_set():
                if (told := finished_progress(watch.wait(min(left, SAFETY_LOOK_SECONDS)))) is not None:
                    return told  # the notice carries the finished job's progress: no query
            else:
                IN_PROCESS_COMPLETIONS.wait_past(seen, min(pause, left))
                pause = min(pause * 2, 0.2)


def _ndjson(client: FusionqClient, job_id: uuid.UUID, offset: int) -> Iterator[bytes]:
    while True:
        page = client.results(job_id, offset=offset, limit=MAX_PAGE)
        for result in page:
            yield (result.model_dump_json() + "\n").encode()
        if len(page) < MAX_PAGE:
            return
        offset += len(page)


def readiness(client: FusionqClient, settings: Settings) -> dict[str, str]:
    """'ok' or what is wrong, for the database, the broker and the workers of each needed queue."""
    import sqlalchemy as sa

    checks = {}
    try:
        with session_for(settings.effective_database_url) as session:
            session.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the readiness answer
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if settings.embedded:
        checks["broker"] = checks["workers"] = "ok"  # in-process: up as long as this process is
        return checks
    try:
        live = client.dispatcher.live_workers()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unreachable: {type(exc).__name__}"
        return checks
    needed = ["embed", "fusion", "maintenance"] + [q for q, spec in (("llm_local", settings.llm_local),
                                                                     ("llm_api", settings.llm_api)) if spec]
    serving = {q for worker in live.values() for q in worker.get("queues", [])}
    missing = [q for q in needed if q not in serving]
    checks["workers"] = "ok" if not missing else f"no live worker on queue(s) {', '.join(missing)}"
    return checks


class _BodyLimit(BaseHTTPMiddleware):
    """413 for a body over the limit, by its Content-Length, before anything reads it."""

    def __init__(self, app, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return _problem(413, "body_too_large", f"the body is {length} bytes; the limit is {self.max_bytes} "
                                 "(FUSIONQ_API_MAX_BODY_MB): split the texts into several jobs")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked: count what arrives
            if len(body) > self.max_bytes:
                return _problem(413, "body_too_large", f"the body is over {self.max_bytes} bytes (FUSIONQ_API_MAX_BODY_MB)")
        return await call_next(request)


def _problem(status: int, code: str, message: str, details: list | None = None,
             headers: dict | None = None) -> JSONResponse:
    return JSONResponse(Problem(code=code, message=message, details=details).model_dump(exclude_none=True),
                        status_code=status, headers=headers)


def _add_error_handlers(api: FastAPI) -> None:
    status_of = [(ClassifierNotFound, 404, "classifier_not_found"), (JobNotFound, 404, "job_not_found"),
                 (IdempotencyConflict, 409, "idempotency_conflict"), (InputError, 422, "invalid_input"),
                 (ServiceUnavailable, 503, "service_unavailable")]

    @api.exception_handler(FusionqError)
    async def fusionq_error(_request, exc: FusionqError):
        for kind, status, code in status_of:
            if isinstance(exc, kind):
                return _problem(status, code, str(exc))
        return _problem(422, "invalid_request", str(exc))

    @api.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        details = [{"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        message = "; ".join(f"{d['where']}: {d['problem']}" for d in details[:5])
        return _problem(422, "invalid_request", message, json.loads(json.dumps(details, default=str)))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _problem(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @api.exception_handler(OperationalError)
    @api.exception_handler(InterfaceError)
    async def database_down(_request, exc):
        from shared.db.engine import database_unreachable

        return _problem(503, "database_unavailable", database_unreachable(api.state.settings.effective_database_url, exc))
