"""Scoring texts with one LLM in this process, through the database's answer cache."""

from __future__ import annotations

from shared.db.engine import ensure_schema
from shared.db.llm import SqlAnswerCache
from shared.llm.cache import score_with_cache
from shared.llm.result import TextScore
from shared.llm.sources import LLMSpec, get_scorer
from shared.progress import progress_bar
from shared.settings import Settings
from shared.textio import text_problems
from shared.vocab import Source


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
