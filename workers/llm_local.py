"""Queue ``llm_local``: per-class scores from the local LLM (a vLLM server, or the in-process hf backend).

Against vLLM run it with many threads so vLLM's continuous batching stays fed:
``celery -A workers.app worker -Q llm_local -P threads -c 16``; with ``hf:`` use ``-P solo -c 1``.
"""

from celery import Celery

from shared.vocab import Source
from workers.llm_common import register_llm_task


def register(app: Celery, *, settings) -> None:
    register_llm_task(app, settings=settings, source=Source.LOCAL)
