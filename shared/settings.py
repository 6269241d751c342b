"""Settings read once from ``FUSIONQ_*`` environment variables (and an optional ``.env``).

Unset broker and database URLs mean the embedded default: an in-memory broker with an
in-process worker, and a SQLite file under ``FUSIONQ_HOME``.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.vocab import Precision

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# Brokers with a visibility timeout: an unacknowledged task is handed out again once it passes.
REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://")


EMBEDDED_BROKER_URL = "memory://"


def is_in_process_broker(url: str | None) -> bool:
    """Whether a broker URL is the in-memory one: the broker, and so the worker, live in this process."""
    return str(url or "").startswith(EMBEDDED_BROKER_URL)


class Settings(BaseSettings):
    """All configuration of a fusionq process. Build with :func:`get_settings`."""

    model_config = SettingsConfigDict(env_prefix="FUSIONQ_", env_file=".env", extra="ignore")

    def __init__(self, **values) -> None:
        """Raises :class:`ConfigError` naming each bad ``FUSIONQ_*`` variable, never a pydantic traceback."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    home: Path = Field(default=Path("~/.fusionq"), description="Folder for the embedded SQLite database and artifacts.")
    broker_url: str | None = Field(default=None, description="Celery broker, e.g. redis://host:6379/0. Unset: in-memory, in-process worker.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. Unset: SQLite under home.")
    artifact_dir: Path | None = Field(default=None, description="Where trained classifiers are saved; must be shared by all workers. Unset: home/artifacts.")
    default_encoder: str = Field(default=DEFAULT_ENCODER, description="Hugging Face id or local path of the encoder used when training does not name one.")
    encoder_precision: Precision = Field(default=Precision.AUTO, description="Number format of encoders a training run chooses (auto, fp32, bf16, fp16 on CUDA, int8 on a CPU); auto: bf16 where the hardware runs it faster than fp32, else fp32. int8 (ONNX Runtime, needs pip install 'fusionq[onnx]'; never chosen by auto): about 2.5x fp32 on a CPU with VNNI or AMX (on an AVX2-only CPU no faster than fp32) at pooled-feature cosine ~0.99 to fp32, for CPU-only serving that needs the speed more than the last bit of accuracy. A trained classifier records the one it used and is served in it; where this CPU runs that one slower than auto would (bf16 without native support, int8 without VNNI), loading says so.")
    device: str | None = Field(default=None, description="torch device for encoders (cuda, cuda:1, cpu). Unset: CUDA when available, else CPU.")
    # 1024, not 256: each task pays a claim, a write and a commit serially, and sorts only its own
    # texts by length; 2,000 AG News texts on 2 AMX cores ran at 0.86 of the bare encoder in 256-item
    # tasks, 0.90 in 512, 0.92 in 1024 and no better in one task (docs/BENCHMARKS.md). A job still
    # spreads over workers in runs of 1024.
    embed_items_per_task: int = Field(default=1024, ge=1, description="Items carried by one embed task message.")
    embed_max_tokens: int | None = Field(default=None, ge=64, description="Token budget of one encoder forward pass (batch size x padded length). Unset: 4096 on a CPU; on CUDA up to 131072, less where a quarter of the GPU memory left free by the weights holds fewer tokens' activations.")
    embed_max_batch: int | None = Field(default=None, ge=1, description="Most texts in one encoder forward pass. Unset: 32 on a CPU, 2048 on CUDA.")
    max_text_chars: int = Field(default=1_000_000, ge=1, description="Texts longer than this are marked failed at submit.")
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads torch may use in a worker (1 suits the fusion worker beside an encoder). Unset: torch's default.")
    llm_local: str | None = Field(default=None, description="LLM served on the llm_local queue: hf:MODEL or openai:MODEL@http://vllm:8000/v1.")
    llm_local_api_key: SecretStr | None = Field(default=None, description="Key for the local OpenAI-compatible server, if it wants one.")
    llm_api: str | None = Field(default=None, description="LLM served on the llm_api queue: openai:MODEL@https://api.openai.com/v1 (or DeepSeek, Gemini, OpenRouter).")
    llm_api_key: SecretStr | None = Field(default=None, description="API key of the external provider; never logged.")
    llm_price_in_per_mtok: float = Field(default=0.0, ge=0, description="USD per million input tokens of the external API.")
    llm_price_out_per_mtok: float = Field(default=0.0, ge=0, description="USD per million output tokens of the external API.")
    llm_rate_per_second: float | None = Field(default=None, gt=0, description="Calls per second to the external API, shared by all workers (Redis).")
    llm_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for one LLM call.")
    llm_max_retries: int = Field(default=4, ge=0, description="Retries of a 429/5xx/timeout, with backoff honouring Retry-After.")
    llm_breaker_failures: int = Field(default=5, ge=1, description="Consecutive failures that open the circuit breaker.")
    llm_breaker_cooldown: float = Field(default=30.0, gt=0, description="Seconds the breaker stays open.")
    llm_batch_items: int = Field(default=32, ge=1, description="Items per LLM scoring task.")
    task_time_limit: int = Field(default=600, ge=10, description="Hard time limit of one task, seconds.")
    visibility_timeout: int = Field(default=3600, ge=60, description="Redis visibility timeout, seconds; with a Redis broker it must be at least twice the task time limit.")
    item_lease_seconds: int = Field(default=15, ge=3, description="A worker's hold on the work it claimed, renewed every third of it while it works; a claim not renewed in time (worker killed, paused, cut off) is sent again. Also the grace before queued work that no broker message carries counts as lost. Queued work may wait any time.")
    max_attempts: int = Field(default=5, ge=1, description="Deliveries of one item (or LLM request) before the sweeper dead-letters it with its error.")
    sweep_interval: float = Field(default=10.0, gt=0, description="Seconds between sweeps (celery beat on the maintenance queue; the embedded worker sweeps on the same interval).")
    worker_max_memory_mb: int | None = Field(default=4096, ge=64, description="A worker process whose resident memory passes this after a task is replaced: prefork children by Celery, a solo (embed) worker by a warm shutdown that its supervisor restarts. Unset: never.")
    api_keys: SecretStr | None = Field(default=None, description="API keys of the HTTP API, comma-separated; callers send 'Authorization: Bearer KEY'. Unset: fusionq serve listens on loopback only.")
    api_max_body_mb: int = Field(default=32, ge=1, description="Largest request body the HTTP API reads, MB (413 above).")
    escalation_tiers: str = Field(default="local,api", description="LLM tiers of auto/full modes, cheapest first: source[@threshold],... Unset threshold: the classifier's calibrated one.")

    @field_validator("database_url")
    @classmethod
    def _parse_database_url(cls, url: str | None) -> str | None:
        if url:
            try:  # the shape SQLAlchemy needs: dialect[+driver]://..., a numeric port
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number
                if not re.fullmatch(r"[a-z][a-z0-9]*(\+[a-z0-9_]+)?", parts.scheme) or "://" not in url:
                    raise ValueError("no dialect://")
            except ValueError as exc:
                raise ValueError(f"is not a database URL ({exc}); expected e.g. "
                                 "postgresql+psycopg://user@host:5432/dbname") from None
        return url or None

    @field_validator("broker_url")
    @classmethod
    def _parse_broker_url(cls, url: str | None) -> str | None:
        if url and "://" not in url:
            raise ValueError("is not a broker URL; expected e.g. redis://host:6379/0 (unset: the embedded in-memory broker)")
        return url or None

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        self.home = self.home.expanduser()
        if self.artifact_dir is not None:
            self.artifact_dir = self.artifact_dir.expanduser()
        if self.task_time_limit * 2 > self.visibility_timeout and self.effective_broker_url.startswith(REDIS_SCHEMES):
            raise ConfigError(
                f"FUSIONQ_TASK_TIME_LIMIT={self.task_time_limit}s must be at most half of "
                f"FUSIONQ_VISIBILITY_TIMEOUT={self.visibility_timeout}s, or Redis redelivers tasks that are still running."
            )
        if self.llm_api and self.llm_api.startswith("openai:") and "api.openai.com" in self.llm_api and not self.llm_api_key:
            raise ConfigError("FUSIONQ_LLM_API points at api.openai.com but FUSIONQ_LLM_API_KEY is not set")
        return self

    @property
    def embedded(self) -> bool:
        """True when the broker lives in this process, so this process must run the worker too."""
        return is_in_process_broker(self.effective_broker_url)

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or EMBEDDED_BROKER_URL

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return _with_driver(self.database_url)
        return f"sqlite:///{self.home / 'fusionq.db'}"

    @property
    def effective_artifact_dir(self) -> Path:
        return self.artifact_dir or self.home / "artifacts"


def _describe(exc: ValidationError) -> str:
    """One line per bad setting, each naming its environment variable and the value given."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            field = str(error["loc"][0])
            given = error.get("input")
            shown = "***" if "key" in field else hide_password(str(given)) if "url" in field else given
            lines.append(f"FUSIONQ_{field.upper()}={shown!s}: {message}" if not isinstance(given, dict)
                         else f"FUSIONQ_{field.upper()}: {message}")
        else:  # a rule over several settings: its message names them
            lines.append(message)
    return "; ".join(lines)


def hide_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _with_driver(url: str) -> str:
    """Name psycopg 3 explicitly: a bare postgresql:// URL would make SQLAlchemy look for psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
