"""Public shapes that cross the service's edge: job requests (HTTP and broker), job progress and
per-item results (pydantic, JSON-ready)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field

from shared.vocab import Mode


def as_utc(moment: dt.datetime) -> dt.datetime:
    """A datetime read from the database, in UTC: SQLite hands back naive ones, which were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


UtcDatetime = Annotated[dt.datetime, AfterValidator(as_utc)]  # always serialised with its offset (RFC 3339)


class JobProgress(BaseModel):
    """Where a job stands. ``finished`` when every item has a prediction or failed."""

    job_id: uuid.UUID
    classifier: str
    mode: str
    status: str
    n_items: int
    n_done: int
    n_failed: int
    created_at: UtcDatetime
    finished_at: UtcDatetime | None

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


MAX_TEXTS_PER_JOB = 100_000


class Callback(BaseModel):
    """A Celery task to call by name (on ``queue``, else its default route) with one JSON argument."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200)
    queue: str | None = Field(default=None, max_length=200)


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
    webhook_url: AnyHttpUrl | None = Field(default=None, description="POSTed the job's summary (JSON) when it finishes.")
    on_complete: Callback | None = Field(default=None, description="A Celery task called with the job's summary when it finishes.")

    def submit_options(self) -> dict:
        """The keyword arguments of ``FusionqClient.submit`` this request asks for."""
        notify = {**(self.on_complete.model_dump(exclude_none=True) if self.on_complete else {}),
                  **({"webhook": str(self.webhook_url)} if self.webhook_url else {})}
        return {"item_modes": [None if m is None else str(m) for m in self.item_modes] if self.item_modes else None,
                "budget_share": self.budget_share, "budget_items": self.budget_items, "budget_usd": self.budget_usd,
                "notify": notify or None}



class BrokerJobRequest(JobRequest):
    """The argument of the ``fusionq.submit`` task: a job request, its idempotency key, and where to
    send the job id once it is stored (``reply_to``: there is no result backend to read it from)."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    reply_to: Callback | None = None
