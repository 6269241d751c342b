"""Public shapes that leave the service: job progress and per-item results (pydantic, JSON-ready)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel

CLASSIFIER_MODES = ("fast",)  # "auto" and "full" arrive with escalation; "llm" jobs use submit_llm


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
    latency_ms: float | None
    error: str | None
