"""Scoring a list of texts with one LLM (`fusionq score`, `evaluate --llm`): in-process, or as a queued job."""

from __future__ import annotations

from shared.client import FusionqClient
from shared.llm.prompts import LabelSet
from shared.llm.result import TextScore
from shared.llm.sources import LLMChoice, choose_llm
from shared.progress import wait_with_progress
from shared.service.llm_scoring import queued_answer_usage, score_in_process
from shared.settings import Settings
from shared.vocab import ItemStatus, ScoreMethod, signal_method


def score_texts(settings: Settings, *, llm: str, labels: LabelSet, multi_label: bool, texts: list[str],
                show_progress: bool = True, timeout: float | None = None, client: FusionqClient | None = None,
                ) -> list[TextScore]:
    """Scores of every text (failed ones say why), in order; a queued source goes through ``client``
    (by default one on ``settings``)."""
    choice = choose_llm(settings, llm)
    if choice.queued:
        if client is not None:
            return _score_through_queue(client, choice, labels, multi_label, texts, show_progress, timeout)
        with FusionqClient(settings) as own:
            return _score_through_queue(own, choice, labels, multi_label, texts, show_progress, timeout)
    return score_in_process(settings, choice.spec, labels=labels, multi_label=multi_label, texts=texts,
                            show_progress=show_progress)


def _score_through_queue(client: FusionqClient, choice: LLMChoice, labels: LabelSet, multi_label: bool,
                         texts: list[str], show_progress: bool, timeout: float | None) -> list[TextScore]:
    """The job's predictions, with the tokens, latency and cost each answer recorded in the database
    (the results carry only probabilities: read alone, every text showed 0 tokens and 0 ms)."""
    job_id = client.submit_llm(texts, labels, multi_label=multi_label, source=choice.source)
    wait_with_progress(client, job_id, total=len(texts), desc=f"score {choice.spec.model}",
                       show_progress=show_progress, timeout=timeout)
    results = client.results(job_id)
    usage = queued_answer_usage(client.settings, job_id, spec=choice.spec, source=choice.source, labels=labels,
                                multi_label=multi_label)
    return [TextScore(probabilities=tuple(r.probabilities[n] for n in labels.names),
                      method=signal_method(r.signals[0]) or ScoreMethod.LOGPROBS, **usage.get(r.position, {}))
            if r.status == ItemStatus.DONE else TextScore.failed(r.error or "failed", **usage.get(r.position, {}))
            for r in results]
