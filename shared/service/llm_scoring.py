"""Scoring texts with one LLM in this process, through the database's answer cache; and what a queued
LLM-alone job's answers recorded (tokens, latency, cost), for callers that read its results back."""

from __future__ import annotations

import uuid

from shared.db.engine import ensure_schema, session_for
from shared.db.llm import SqlAnswerCache, job_requests, recorded_answers
from shared.llm.cache import question_keys, score_with_cache
from shared.llm.result import TextScore
from shared.llm.sources import LLMSpec, get_scorer
from shared.progress import progress_bar
from shared.schemas import as_utc
from shared.settings import Settings
from shared.textio import text_problems
from shared.vocab import RequestStatus, Source


def score_in_process(settings: Settings, spec: LLMSpec, *, labels, multi_label: bool, texts: list[str],
                     show_progress: bool = True, desc: str | None = None, source: str | None = None) -> list[TextScore]:
    """Scores of every text by ``spec`` in this process, through the cache; unusable texts fail with the reason.

    ``source`` (local/api) picks the key and prices; by default openai-backend specs count as api."""
    scores: list[TextScore | None] = [None] * len(texts)
    for i, problem in text_problems(texts, max_chars=settings.max_text_chars):
        scores[i] = TextScore.failed(problem)
    usable = [i for i, score in enumerate(scores) if score is None]
    source = source or (Source.API if spec.backend == "openai" else Source.LOCAL)
    scorer = get_scorer(spec, settings, source=source)
    url = settings.effective_database_url
    ensure_schema(url)
    with progress_bar(total=len(usable), desc=desc or f"score {spec.model}", unit="text", enabled=show_progress) as bar:
        fresh = score_with_cache(cache=SqlAnswerCache(url), scorer=scorer, labels=labels, multi_label=multi_label,
                                 texts=[texts[i] for i in usable], batch_size=settings.llm_batch_items,
                                 on_batch=bar.update)
    for i, score in zip(usable, fresh):
        scores[i] = score
    return scores


def queued_answer_usage(settings: Settings, job_id: uuid.UUID | str, *, spec: LLMSpec, source: str, labels,
                        multi_label: bool) -> dict[int, dict]:
    """Per item position of a job answered by ``source`` (whose LLM is ``spec``): the ``tokens_in``,
    ``tokens_out``, ``latency_ms`` and ``cost_usd`` its answer recorded in ``llm_scores``, and ``cached``.

    The same numbers as an in-process score: an answer the worker took from the cache (one recorded
    before this job asked) is ``cached``, keeps its tokens and what it cost, and took no time now.
    Positions with no answered request, or whose answer was never recorded, are left out.
    """
    with session_for(settings.effective_database_url) as session:
        requests = job_requests(session=session, job_id=uuid.UUID(str(job_id)), source=source)
        keys = question_keys(spec.backend, spec.model, labels, multi_label, [r["text"] for r in requests])
        answers = recorded_answers(session=session, keys=keys)
    usage = {}
    for request, key in zip(requests, keys):
        row = answers.get(key)
        if row is None or request["status"] not in (RequestStatus.DONE, RequestStatus.FAILED):
            continue  # never answered for this job (queued still, or skipped): nothing it spent
        if request["status"] == RequestStatus.FAILED:
            cached = False  # failures are never served from the cache
        elif row["cost_usd"] > 0:
            cached = request["cost_usd"] == 0  # the request records what it spent: nothing for a cache hit
        else:  # free answers (a local model): a hit is an answer recorded before this job asked
            cached = as_utc(row["created_at"]) < as_utc(request["created_at"])
        usage[request["position"]] = {"tokens_in": row["tokens_in"], "tokens_out": row["tokens_out"],
                                      "latency_ms": 0.0 if cached else row["latency_ms"],
                                      "cost_usd": row["cost_usd"], "cached": cached}
    return usage

