"""The LLM answer cache: ask a scorer only what nobody has asked before.

Answers are keyed by (backend, model, prompt version, label set, text hash). Where they are kept
is an :class:`AnswerCache`: ``shared.db.llm.SqlAnswerCache`` in the service, a
:class:`MemoryAnswerCache` in plain code and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.llm.prompts import PROMPT_VERSION, LabelSet, cache_key
from shared.llm.result import TextScore
from shared.textio import text_hash
from shared.vocab import ScoreMethod


class AnswerCache(Protocol):
    """Stores answer rows (dicts of ``llm_scores`` columns) by cache key."""

    def lookup(self, keys: Sequence[str]) -> dict[str, dict]:
        """Usable (not failed) answers among ``keys``."""

    def store(self, rows: Sequence[dict]) -> None:
        """Upsert rows; a new answer replaces only a recorded failure."""


class MemoryAnswerCache:
    """An :class:`AnswerCache` in this process's memory."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def lookup(self, keys: Sequence[str]) -> dict[str, dict]:
        return {k: self.rows[k] for k in keys if k in self.rows and self.rows[k]["method"] != ScoreMethod.FAILED}

    def store(self, rows: Sequence[dict]) -> None:
        for row in rows:
            old = self.rows.get(row["cache_key"])
            if old is None or old["method"] == ScoreMethod.FAILED:
                self.rows[row["cache_key"]] = dict(row)


def provider_name(scorer) -> str:
    return getattr(scorer, "provider", None) or scorer.backend


def keys_for(scorer, labels: LabelSet, multi_label: bool, texts: Sequence[str]) -> list[str]:
    return question_keys(scorer.backend, scorer.model_name, labels, multi_label, texts)


def question_keys(backend: str, model: str, labels: LabelSet, multi_label: bool, texts: Sequence[str]) -> list[str]:
    """The cache keys of ``texts`` asked of ``backend``/``model`` (a scorer's ``backend`` and ``model_name``)."""
    return [cache_key(backend=backend, model=model, labels=labels, multi_label=multi_label, text_hash=text_hash(t))
            for t in texts]


def answer_rows(scorer, labels: LabelSet, multi_label: bool, texts: Sequence[str],
                scores: Sequence[TextScore]) -> list[dict]:
    """Cache rows for fresh answers."""
    keys = keys_for(scorer, labels, multi_label, texts)
    return [{
        "cache_key": key, "provider": provider_name(scorer), "model": scorer.model_name,
        "prompt_version": PROMPT_VERSION, "label_set_hash": labels.digest, "text_hash": text_hash(text),
        "scores": list(score.probabilities) if score.probabilities is not None else None, "method": score.method,
        "tokens_in": score.tokens_in, "tokens_out": score.tokens_out, "cost_usd": score.cost_usd,
        "latency_ms": score.latency_ms, "error": score.error,
    } for key, text, score in zip(keys, texts, scores)]


def as_text_score(row: dict) -> TextScore:
    """A cached row as a score, flagged ``cached``: it costs nothing now (``spent_usd`` is 0) but keeps
    what the original call cost, for cost estimates."""
    return TextScore(probabilities=tuple(row["scores"]) if row["scores"] is not None else None, method=row["method"],
                     tokens_in=row["tokens_in"], tokens_out=row["tokens_out"], latency_ms=0.0,
                     cost_usd=row["cost_usd"], error=row["error"], cached=True)


def score_with_cache(*, cache: AnswerCache, scorer, labels: LabelSet, multi_label: bool, texts: Sequence[str],
                     batch_size: int = 32, on_batch=None) -> list[TextScore]:
    """Scores for ``texts`` in order; cached answers are reused, new ones stored per batch."""
    keys = keys_for(scorer, labels, multi_label, texts)
    cached = {k: as_text_score(row) for k, row in cache.lookup(keys).items()}
    missing = [i for i, k in enumerate(keys) if k not in cached]
    fresh: dict[int, TextScore] = {}
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        batch = scorer.score([texts[i] for i in chunk], labels, multi_label=multi_label)
        cache.store(answer_rows(scorer, labels, multi_label, [texts[i] for i in chunk], batch.scores))
        fresh.update(zip(chunk, batch.scores))
        if on_batch:
            on_batch(len(chunk))
    if on_batch and len(texts) > len(missing):
        on_batch(len(texts) - len(missing))
    return [cached[k] if k in cached else fresh[i] for i, k in enumerate(keys)]
