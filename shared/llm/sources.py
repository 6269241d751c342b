"""LLM source specs (``hf:MODEL`` or ``openai:MODEL@BASE_URL``) and building scorers from them."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.errors import ConfigError
from shared.settings import Settings
from shared.vocab import Source, values


@dataclass(frozen=True)
class LLMSpec:
    """Which backend and model answer the questions, and where."""

    backend: str
    model: str
    base_url: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


def parse_llm_spec(text: str) -> LLMSpec:
    """``hf:Qwen/Qwen2.5-0.5B-Instruct`` or ``openai:gpt-4o-mini@https://api.openai.com/v1``."""
    backend, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise ConfigError(f"LLM spec {text!r}: expected hf:MODEL or openai:MODEL@BASE_URL")
    if backend == "hf":
        return LLMSpec("hf", rest)
    if backend == "openai":
        model, at, base_url = rest.partition("@")
        if not at or not base_url.startswith(("http://", "https://")) or not model:
            raise ConfigError(f"LLM spec {text!r}: expected openai:MODEL@http(s)://host/v1")
        return LLMSpec("openai", model, base_url)
    raise ConfigError(f"LLM spec {text!r}: unknown backend {backend!r}; use hf or openai")


@dataclass(frozen=True)
class LLMChoice:
    """Which LLM answers: a worker source (``local``/``api``) or an explicit spec run in-process."""

    spec: LLMSpec
    source: str | None  # set when the worker queue of that source can be used

    @property
    def queued(self) -> bool:
        return self.source is not None


def choose_llm(settings: Settings, llm: str) -> LLMChoice:
    """``local``/``api`` -> the configured source (queued when a broker is set); ``hf:``/``openai:`` -> in-process."""
    if llm in values(Source):
        return LLMChoice(spec=source_spec(settings, llm), source=None if settings.embedded else Source(llm))
    return LLMChoice(spec=parse_llm_spec(llm), source=None)


def _configured_value(settings: Settings, source: str) -> str | None:
    return {Source.LOCAL: settings.llm_local, Source.API: settings.llm_api}.get(source)


def configured_sources(settings: Settings) -> list[str]:
    """The worker sources that have an LLM configured, in tier order (local, api)."""
    return [s for s in Source if _configured_value(settings, s)]


def source_spec(settings: Settings, source: str) -> LLMSpec:
    """The spec configured for a worker source, ``local`` (FUSIONQ_LLM_LOCAL) or ``api`` (FUSIONQ_LLM_API)."""
    value = _configured_value(settings, source)
    if source not in values(Source):
        raise ConfigError(f"unknown LLM source {source!r}: use {' or '.join(values(Source))}")
    if not value:
        raise ConfigError(f"no LLM configured for source {source!r}: set FUSIONQ_LLM_{source.upper()}")
    return parse_llm_spec(value)


def build_scorer(spec: LLMSpec, settings: Settings, *, source: str = Source.API):
    """A scorer for ``spec``; rate limit and breaker state live in Redis when a Redis broker is set."""
    if spec.backend == "hf":
        from shared.llm.hf import HFScorer

        return HFScorer(spec.model, device=settings.device)
    from shared.llm.limits import RateLimiter
    from shared.llm.openai_compat import OpenAICompatScorer, Pricing

    kv = _shared_kv(settings)
    key = settings.llm_api_key if source == Source.API else settings.llm_local_api_key
    name = _provider_name(spec)
    return OpenAICompatScorer(
        base_url=spec.base_url, model=spec.model, api_key=key.get_secret_value() if key else None,
        pricing=Pricing(input_per_mtok=settings.llm_price_in_per_mtok if source == Source.API else 0.0,
                        output_per_mtok=settings.llm_price_out_per_mtok if source == Source.API else 0.0),
        timeout=settings.llm_timeout, max_retries=settings.llm_max_retries, provider=name,
        limiter=RateLimiter(kv, name, settings.llm_rate_per_second if source == Source.API else None),
        breaker=_breaker(kv, name, settings),
    )


def source_breaker(settings: Settings, source: str):
    """The circuit breaker that the ``source`` workers share, or None (in-process models have none).

    The aggregator reads it to skip a tier that is down instead of queueing work that would fail.
    """
    spec = source_spec(settings, source)
    if spec.backend == "hf":
        return None
    return _breaker(_shared_kv(settings), _provider_name(spec), settings)


def _provider_name(spec: LLMSpec) -> str:
    return f"{spec.model}@{spec.base_url}"


def _breaker(kv, name: str, settings: Settings):
    from shared.llm.limits import CircuitBreaker

    return CircuitBreaker(kv, name, failures=settings.llm_breaker_failures, cooldown=settings.llm_breaker_cooldown)


_KVS: dict[str, object] = {}
_KV_LOCK = threading.Lock()  # apart from _LOCK: get_scorer holds that one while building


def _shared_kv(settings: Settings):
    """Where limiter and breaker state lives: Redis when the broker is Redis, else this process."""
    from shared.llm.limits import MemoryKV, RedisKV

    broker = settings.broker_url or ""
    with _KV_LOCK:
        if broker not in _KVS:
            _KVS[broker] = RedisKV(broker) if broker.startswith(("redis://", "rediss://")) else MemoryKV()
        return _KVS[broker]


_SCORERS: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def get_scorer(spec: LLMSpec, settings: Settings, *, source: str):
    """This process's scorer for ``spec`` (a local model loads once per process)."""
    with _LOCK:
        key = (spec.name, source)
        if key not in _SCORERS:
            _SCORERS[key] = build_scorer(spec, settings, source=source)
        return _SCORERS[key]
