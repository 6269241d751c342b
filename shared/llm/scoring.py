"""Scoring texts through the cache: ask the scorer only what nobody has asked before."""

from __future__ import annotations

from collections.abc import Sequence

from shared.db.engine import session_for
from shared.llm import cache
from shared.llm.prompts import LabelSet
from shared.llm.result import TextScore


def score_with_cache(*, database_url: str, scorer, labels: LabelSet, multi_label: bool, texts: Sequence[str],
                     batch_size: int = 32, on_batch=None) -> list[TextScore]:
    """Scores for ``texts`` in order; cached answers are reused, new ones written in bulk per batch."""
    keys = cache.keys_for(scorer, labels, multi_label, texts)
    with session_for(database_url) as session, session.begin():
        cached = {k: cache.as_text_score(row) for k, row in cache.lookup(session=session, keys=keys).items()}
    missing = [i for i, k in enumerate(keys) if k not in cached]
    fresh: dict[int, TextScore] = {}
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        batch = scorer.score([texts[i] for i in chunk], labels, multi_label=multi_label)
        with session_for(database_url) as session, session.begin():
            cache.store(session=session, scorer=scorer, labels=labels, multi_label=multi_label,
                        texts=[texts[i] for i in chunk], scores=batch.scores)
        fresh.update(zip(chunk, batch.scores))
        if on_batch:
            on_batch(len(chunk))
    if on_batch and len(texts) > len(missing):
        on_batch(len(texts) - len(missing))
    return [cached[k] if k in cached else fresh[i] for i, k in enumerate(keys)]
