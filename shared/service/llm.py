"""The ``llm_local`` / ``llm_api`` stage: answer queued LLM requests through the answer cache."""

from __future__ import annotations

import logging

from shared.db.engine import session_for
from shared.db.llm import SqlAnswerCache, store_request_results
from shared.errors import ConfigError, ScorerError
from shared.llm.cache import score_with_cache
from shared.llm.result import TextScore
from shared.llm.sources import get_scorer, source_spec
from shared.service.claims import claim, job_label_set
from shared.settings import Settings

log = logging.getLogger(__name__)


def llm_stage(settings: Settings, *, job_id: str, item_ids: list[int], source: str) -> list[int]:
    """Answer the queued ``source`` requests of the items among ``item_ids``, through the cache.

    A failed answer (after the scorer's own retries, or with the breaker open) is recorded on the
    request: the signal is then missing and the aggregator finishes the item without it. Returns
    the ids whose request is now answered either way, for the aggregator.
    """
    url = settings.effective_database_url
    held = claim(settings, job_id, item_ids, source=source)
    claimed = held.items
    if not claimed:
        return []
    labels, multi_label = job_label_set(held.job, held.classifier)
    with held.heartbeat(settings):  # LLM calls can take minutes with retries: the lease must not lapse
        try:
            scorer = get_scorer(source_spec(settings, source), settings, source=source)
            scores = score_with_cache(cache=SqlAnswerCache(url), scorer=scorer, labels=labels, multi_label=multi_label,
                                      texts=[c.text for c in claimed], batch_size=len(claimed))
        except (ScorerError, ConfigError) as exc:  # the LLM cannot be built or asked here: no retry can help
            scores = [TextScore.failed(str(exc))] * len(claimed)
        with session_for(url) as session, session.begin():
            recorded = store_request_results(session=session, source=source, token=held.token,
                                             results={c.id: s for c, s in zip(claimed, scores)})
    failed = [s for s in scores if s.error]
    if failed:  # the items finish without this signal, flagged; the operator should see why
        log.warning("job %s: %s LLM failed on %d of %d items (first error: %s)", job_id, source, len(failed),
                    len(scores), failed[0].error)
    return recorded
