"""Public shapes that leave the service: job progress and per-item results (pydantic, JSON-ready)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field



class JobProgress(BaseModel):
    """Where a job stands. ``finished`` when every item has a prediction or failed."""

    job_id: uuid.UUID
    classifier: str
    mode: str
    status: str
    n_items: int
    n_done: int
    n_failed: int
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        return self.status == "completed"

    @property
    def n_terminal(self) -> int:
        return self.n_done + self.n_failed


class ItemResult(BaseModel):
    """The answer for one submitted text, in submission order. ``error`` is set when it failed."""

    position: int
    status: str
    labels: list[str]
    probabilities: dict[str, float]
    confidence: float | None
    signals: list[str]
    flags: list[str] = []  # budget_exhausted, missing:llm:<source>: what this answer lacks
    latency_ms: float | None
    error: str | None


class TierStats(BaseModel):
    """One LLM tier of a job: its threshold and what its requests came to."""

    source: str
    threshold: float | None
    queued: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0  # the tier was down when items reached it
    cost_usd: float = 0.0


class JobStats(BaseModel):
    """Where a job's money went: escalations per tier, their cost, the budget and the flags."""

    job_id: uuid.UUID
    mode: str
    status: str
    labels: list[str] = Field(description="The classes the job answers, in the order of its probabilities.")
    n_items: int
    n_done: int
    n_failed: int
    n_escalated: int
    budget_items: int | None
    budget_usd: float | None
    llm_cost_usd: float
    tiers: list[TierStats]
    flags: dict[str, int]
