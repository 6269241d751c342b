"""Scorer for any OpenAI-compatible chat-completions endpoint (vLLM, OpenAI, DeepSeek, Gemini, ...).

Reads class probabilities from ``logprobs``/``top_logprobs`` of the first answer token. A provider
that returns no logprobs, or rejects the parameter, is asked for a JSON answer instead, and the
result is marked as a vote. Every foreign error is mapped to a ``ScorerError`` in one place
(:meth:`OpenAICompatScorer._post`), which is also the only retry loop.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from shared.errors import (
    LLMAnswerError,
    LogprobsUnsupported,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ScorerError,
)
from shared.llm.limits import CircuitBreaker, MemoryKV, RateLimiter
from shared.llm.parse import parse_vote, probabilities_from_top_logprobs, yes_probability
from shared.llm.prompts import (
    KEYS,
    LabelSet,
    multi_label_question_messages,
    multi_label_vote_messages,
    single_label_messages,
)
from shared.llm.result import ScoreBatch, TextScore
from shared.vocab import ScoreMethod


@dataclass(frozen=True, kw_only=True)
class Pricing:
    """USD per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_mtok + tokens_out * self.output_per_mtok) / 1e6


@dataclass
class _Reply:
    content: str | None
    top_logprobs: list[tuple[str, float]] | None
    tokens_in: int
    tokens_out: int


class OpenAICompatScorer:
    """Per-class probabilities from an OpenAI-compatible endpoint; never a default class."""

    backend = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str | None = None, pricing: Pricing = Pricing(),
                 timeout: float = 30.0, max_retries: int = 4, top_logprobs: int = 20, use_logprobs: bool = True,
                 http_client: httpx.Client | None = None, limiter: RateLimiter | None = None,
                 breaker: CircuitBreaker | None = None, provider: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.provider = provider or httpx.URL(self.base_url).host or "openai"
        self.pricing = pricing
        self.max_retries = max_retries
        self.top_logprobs = top_logprobs
        self.use_logprobs = use_logprobs
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = http_client or httpx.Client(timeout=timeout)
        self.client.headers.update(headers)
        self.timeout = timeout
        kv = MemoryKV()
        self.limiter = limiter or RateLimiter(kv, self.provider, None)
        self.breaker = breaker or CircuitBreaker(kv, self.provider)
        self._sleep = sleep

    # ---- public --------------------------------------------------------------------------
    def score(self, texts: Sequence[str], labels: LabelSet, *, multi_label: bool = False) -> ScoreBatch:
        """Score each text; a failure on one text is recorded on it and does not stop the rest."""
        return ScoreBatch(scores=tuple(self.score_one(t, labels, multi_label=multi_label) for t in texts),
                          n_classes=len(labels.names))

    def score_one(self, text: str, labels: LabelSet, *, multi_label: bool) -> TextScore:
        started = time.perf_counter()
        usage = [0, 0]
        try:
            if self.use_logprobs and len(labels.names) <= len(KEYS):
                try:
                    probs = (self._multi_logprobs if multi_label else self._single_logprobs)(text, labels, usage)
                    method = ScoreMethod.LOGPROBS
                except LogprobsUnsupported:
                    self.use_logprobs = False  # remember: this provider/model never gives logprobs
                    probs, method = self._vote(text, labels, multi_label, usage), ScoreMethod.VOTE
            else:
                probs, method = self._vote(text, labels, multi_label, usage), ScoreMethod.VOTE
        except ScorerError as exc:
            return TextScore.failed(f"{self.provider}/{self.model_name}: {exc}", tokens_in=usage[0], tokens_out=usage[1],
                                    latency_ms=(time.perf_counter() - started) * 1000,
                                    cost_usd=self.pricing.cost(*usage))
        return TextScore(probabilities=probs, method=method, tokens_in=usage[0], tokens_out=usage[1],
                         latency_ms=(time.perf_counter() - started) * 1000, cost_usd=self.pricing.cost(*usage))

    # ---- strategies ----------------------------------------------------------------------
    def _single_logprobs(self, text: str, labels: LabelSet, usage: list[int]) -> tuple[float, ...]:
        reply = self._ask(single_label_messages(labels, text), logprobs=True, usage=usage)
        if reply.top_logprobs is None:
            raise LogprobsUnsupported("the answer carried no logprobs")
        return probabilities_from_top_logprobs(reply.top_logprobs, labels.keys)

    def _multi_logprobs(self, text: str, labels: LabelSet, usage: list[int]) -> tuple[float, ...]:
        probs = []
        for c in range(len(labels.names)):
            reply = self._ask(multi_label_question_messages(labels, text, c), logprobs=True, usage=usage)
            if reply.top_logprobs is None:
                raise LogprobsUnsupported("the answer carried no logprobs")
            probs.append(yes_probability(reply.top_logprobs))
        return tuple(probs)

    def _vote(self, text: str, labels: LabelSet, multi_label: bool, usage: list[int]) -> tuple[float, ...]:
        messages = multi_label_vote_messages(labels, text) if multi_label else single_label_messages(labels, text, vote=True)
        reply = self._ask(messages, logprobs=False, usage=usage, max_tokens=16 + 4 * len(labels.names))
        # some servers echo the prompt before the answer: parse only what follows our own messages
        return parse_vote(reply.content, labels.keys, multi_label=multi_label, sent=[m["content"] for m in messages])

    # ---- transport -----------------------------------------------------------------------
    def _ask(self, messages: list[dict], *, logprobs: bool, usage: list[int], max_tokens: int = 1) -> _Reply:
        body = {"model": self.model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        data = self._post("/chat/completions", body)
        reply = _read_reply(data)
        usage[0] += reply.tokens_in
        usage[1] += reply.tokens_out
        return reply

    def _post(self, path: str, body: dict) -> dict:
        """POST with the one retry loop: 429 (Retry-After honoured), 5xx and timeouts retry with
        exponential backoff and jitter; everything else fails at once. Errors become ScorerErrors."""
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            self.breaker.check()
            self.limiter.acquire()
            delay = None
            try:
                response = self.client.post(url, json=body, timeout=self.timeout)
            except httpx.TimeoutException as exc:
                self.breaker.record_failure()
                error: ProviderError = ProviderTimeout(f"no answer from {url} within {self.timeout:.0f}s")
                error.__cause__ = exc
            except httpx.HTTPError as exc:
                self.breaker.record_failure()
                error = ProviderError(f"cannot reach {url}: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                if response.status_code == 200:
                    self.breaker.record_success()
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise LLMAnswerError(f"{url} answered 200 with a body that is not JSON: {response.text[:80]!r}") from exc
                message = _error_message(response)
                if response.status_code == 429:
                    delay = _retry_after(response)
                    error = RateLimited(f"{url} rate-limited the call (429): {message}", retry_after=delay)
                elif response.status_code >= 500:
                    self.breaker.record_failure()
                    error = ProviderError(f"{url} failed with {response.status_code}: {message}")
                elif response.status_code == 400 and "logprob" in message.lower():
                    raise LogprobsUnsupported(f"{self.model_name} at {url} rejects logprobs: {message}")
                else:
                    raise ProviderError(f"{url} refused the request ({response.status_code}): {message}; "
                                        "check the model name, API key and base URL")
            if attempt == self.max_retries:
                raise error
            self._sleep(delay if delay is not None else backoff_seconds(attempt))
        raise AssertionError("unreachable")


def backoff_seconds(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter, in seconds: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), 120.0) if value is not None else None
    except ValueError:
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return response.text[:200]


def _read_reply(data: dict) -> _Reply:
    """The parts of a chat-completions response we use; anything malformed is an LLMAnswerError."""
    try:
        choice = data["choices"][0]
        content = (choice.get("message") or {}).get("content")
        usage = data.get("usage") or {}
        logprobs = choice.get("logprobs")
        top = None
        if logprobs and logprobs.get("content"):
            first = logprobs["content"][0]
            top = [(t["token"], float(t["logprob"])) for t in first.get("top_logprobs") or []]
            if not top:
                top = [(first["token"], float(first["logprob"]))]
        return _Reply(content=content, top_logprobs=top, tokens_in=int(usage.get("prompt_tokens", 0)),
                      tokens_out=int(usage.get("completion_tokens", 0)))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise LLMAnswerError(f"malformed chat-completions response: {json.dumps(data)[:120]}") from exc
