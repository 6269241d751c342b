"""The LLM answer cache in the ``llm_scores`` table: lookups, idempotent writes, statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.jobs import dialect_insert
from shared.db.models import LlmScore, utcnow
from shared.llm.prompts import PROMPT_VERSION, LabelSet, cache_key
from shared.llm.result import TextScore
from shared.textio import text_hash


def provider_name(scorer) -> str:
    return getattr(scorer, "provider", None) or scorer.backend


def keys_for(scorer, labels: LabelSet, multi_label: bool, texts: Sequence[str]) -> list[str]:
    return [cache_key(backend=scorer.backend, model=scorer.model_name, labels=labels, multi_label=multi_label,
                      text_hash=text_hash(t)) for t in texts]


def lookup(*, session: Session, keys: Sequence[str], count_hits: bool = True) -> dict[str, LlmScore]:
    """Usable cached answers (failures are not reused) by cache key; counts a hit for each."""
    if not keys:
        return {}
    rows = session.scalars(sa.select(LlmScore).where(LlmScore.cache_key.in_(set(keys)), LlmScore.method != "failed")).all()
    found = {row.cache_key: row for row in rows}
    if found and count_hits:
        session.execute(sa.update(LlmScore).where(LlmScore.cache_key.in_(list(found))).values(hits=LlmScore.hits + 1))
    return found


def store(*, session: Session, scorer, labels: LabelSet, multi_label: bool, texts: Sequence[str],
          scores: Sequence[TextScore]) -> None:
    """Upsert answers; a new answer replaces only a recorded failure, never a good answer."""
    keys = keys_for(scorer, labels, multi_label, texts)
    rows = [{
        "cache_key": key, "provider": provider_name(scorer), "model": scorer.model_name,
        "prompt_version": PROMPT_VERSION, "label_set_hash": labels.digest, "text_hash": text_hash(text),
        "scores": list(score.probabilities) if score.probabilities is not None else None, "method": score.method,
        "tokens_in": score.tokens_in, "tokens_out": score.tokens_out, "cost_usd": score.cost_usd,
        "latency_ms": score.latency_ms, "error": score.error, "hits": 0, "created_at": utcnow(),
    } for key, text, score in zip(keys, texts, scores)]
    if not rows:
        return
    stmt = dialect_insert(session)(LlmScore)
    updatable = ("scores", "method", "tokens_in", "tokens_out", "cost_usd", "latency_ms", "error", "created_at")
    stmt = stmt.on_conflict_do_update(index_elements=["cache_key"], set_={c: stmt.excluded[c] for c in updatable},
                                      where=LlmScore.method == "failed")
    session.execute(stmt, rows)


def as_text_score(row: LlmScore) -> TextScore:
    """A cached row as a score, flagged ``cached``: it costs nothing now (``spent_usd`` is 0) but keeps
    what the original call cost, for cost estimates."""
    return TextScore(probabilities=tuple(row.scores) if row.scores is not None else None, method=row.method,
                     tokens_in=row.tokens_in, tokens_out=row.tokens_out, latency_ms=0.0,
                     cost_usd=row.cost_usd, error=row.error, cached=True)


def stats(*, session: Session) -> list[dict]:
    """Per provider and model: calls, failures, cache hits and hit rate, tokens, cost, latency percentiles."""
    groups = session.execute(sa.select(LlmScore.provider, LlmScore.model).distinct()
                             .order_by(LlmScore.provider, LlmScore.model)).all()
    report = []
    for provider, model in groups:
        rows = session.execute(sa.select(LlmScore.method, LlmScore.hits, LlmScore.tokens_in, LlmScore.tokens_out,
                                         LlmScore.cost_usd, LlmScore.latency_ms)
                               .where(LlmScore.provider == provider, LlmScore.model == model)).all()
        calls = len(rows)
        hits = sum(r.hits for r in rows)
        latencies = np.array([r.latency_ms for r in rows], dtype=float)
        report.append({
            "provider": provider, "model": model, "calls": calls,
            "failed": sum(r.method == "failed" for r in rows), "votes": sum(r.method == "vote" for r in rows),
            "cache_hits": hits, "cache_hit_rate": hits / (hits + calls) if calls + hits else 0.0,
            "tokens_in": sum(r.tokens_in for r in rows), "tokens_out": sum(r.tokens_out for r in rows),
            "cost_usd": round(sum(r.cost_usd for r in rows), 6),
            **{f"latency_ms_p{p}": round(float(np.percentile(latencies, p)), 1) for p in (50, 90, 99)},
        })
    return report
