"""What the HTTP API takes and answers: request bodies, pages and errors (OpenAPI is built from these)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import ItemResult, JobProgress, JobStats
from shared.vocab import Mode

MAX_TEXTS_PER_JOB = 100_000
MAX_TEXTS_PER_CLASSIFY = 1_000


class JobRequest(BaseModel):
    """A classification job: texts for one classifier in one mode (or per-item modes), with an optional budget."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS_PER_JOB, description="The texts, in order.")
    classifier: str = Field(min_length=1, max_length=200, description="NAME or NAME@VERSION.")
    mode: Mode = Field(default=Mode.FAST, description="fast, auto, full or llm.")
    item_modes: list[Mode | None] | None = Field(default=None, description="A mode per text (null keeps the job's).")
    budget_share: float | None = Field(default=None, gt=0, le=1, description="auto: at most this share may escalate.")
    budget_items: int | None = Field(default=None, ge=0, description="auto: at most this many items may escalate.")
    budget_usd: float | None = Field(default=None, ge=0, description="auto: at most this many dollars of LLM calls.")

    def submit_options(self) -> dict:
        return {"item_modes": [None if m is None else str(m) for m in self.item_modes] if self.item_modes else None,
                "budget_share": self.budget_share, "budget_items": self.budget_items, "budget_usd": self.budget_usd}


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
    created_at: dt.datetime


class Problem(BaseModel):
    """Every error: a stable code and a message saying what is wrong and how to fix it."""

    code: str
    message: str
    details: list[dict] | None = None


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]
