"""Queue ``llm_api``: per-class scores from an external API, under a rate limit shared through Redis.

``celery -A workers.app worker -Q llm_api -P threads -c 8``; the shared limiter, not the
concurrency, decides the call rate (FUSIONQ_LLM_RATE_PER_SECOND).
"""

from celery import Celery

from shared.vocab import Source
from workers.llm_common import register_llm_task


def register(app: Celery, *, settings) -> None:
    register_llm_task(app, settings=settings, source=Source.API)
