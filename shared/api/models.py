"""What the HTTP API takes and answers: request bodies, pages and errors (OpenAPI is built from these)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from shared.schemas import ItemResult, JobProgress, JobRequest, JobStats, UtcDatetime

MAX_TEXTS_PER_CLASSIFY = 1_000


class ClassifyRequest(JobRequest):
    """A small synchronous batch: answered in the response if it finishes within ``timeout_s``."""

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS_PER_CLASSIFY, description="The texts, in order.")
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="How long to wait before answering 202.")


class JobAccepted(BaseModel):
    job_id: uuid.UUID
    status: str
    status_url: str
    results_url: str


class ClassifyAnswer(BaseModel):
    job_id: uuid.UUID
    status: str
    results: list[ItemResult]


class ResultsPage(BaseModel):
    job_id: uuid.UUID
    status: str
    offset: int
    limit: int
    n_items: int
    next_offset: int | None = Field(description="Where the next page starts; null on the last page.")
    results: list[ItemResult]


class JobView(BaseModel):
    """A job's status and progress, and its stats (tiers, cost, flags)."""

    progress: JobProgress
    stats: JobStats


class ClassifierInfo(BaseModel):
    name: str
    version: int
    labels: list[str]
    multi_label: bool
    created_at: UtcDatetime


class Problem(BaseModel):
    """Every error: a stable code and a message saying what is wrong and how to fix it."""

    code: str
    message: str
    details: list[dict] | None = None


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
