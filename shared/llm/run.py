"""Scoring a whole list of texts with one LLM: in-process through the cache, or as a queued job."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InputError
from shared.llm.prompts import LabelSet
from shared.llm.result import TextScore
from shared.llm.scoring import score_with_cache
from shared.llm.sources import LLMSpec, get_scorer, parse_llm_spec, source_spec
from shared.progress import progress_bar
from shared.settings import Settings
from shared.textio import text_problems


@dataclass(frozen=True)
class LLMChoice:
    """Which LLM answers: a worker source (``local``/``api``) or an explicit spec run in-process."""

    spec: LLMSpec
    source: str | None  # set when the worker queue of that source can be used

    @property
    def queued(self) -> bool:
        return self.source is not None


def choose_llm(settings: Settings, llm: str) -> LLMChoice:
    """``local``/``api`` -> the configured source (queued when a broker is set); ``hf:``/``openai:`` -> in-process."""
    if llm in ("local", "api"):
        return LLMChoice(spec=source_spec(settings, llm), source=None if settings.embedded else llm)
    return LLMChoice(spec=parse_llm_spec(llm), source=None)


def parse_labels(text: str) -> LabelSet:
    """``sports,business`` or ``sports=games and athletes,business=money and firms``."""
    names, descriptions = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, description = part.partition("=")
        names.append(name.strip())
        descriptions.append(description.strip())
    if len(names) < 1:
        raise InputError("--labels needs at least one class name, e.g. --labels sports,business")
    try:
        return LabelSet(tuple(names), tuple(descriptions) if any(descriptions) else ())
    except ValueError as exc:
        raise InputError(f"--labels {text!r}: {exc}") from exc


def score_texts(settings: Settings, *, llm: str, labels: LabelSet, multi_label: bool, texts: list[str],
                show_progress: bool = True, timeout: float | None = None) -> list[TextScore]:
    """Scores of every text (failed ones say why), in order."""
    choice = choose_llm(settings, llm)
    if choice.queued:
        return _score_through_queue(settings, choice, labels, multi_label, texts, show_progress, timeout)
    return score_in_process(settings, choice.spec, labels=labels, multi_label=multi_label, texts=texts,
                            show_progress=show_progress)


def score_in_process(settings: Settings, spec: LLMSpec, *, labels: LabelSet, multi_label: bool, texts: list[str],
                     show_progress: bool = True, desc: str | None = None, source: str | None = None) -> list[TextScore]:
    """Scores of every text by ``spec`` in this process, through the cache; unusable texts fail with the reason.

    ``source`` (local/api) picks the key and prices; by default openai-backend specs count as api."""
    from shared.db.engine import ensure_schema

    scores: list[TextScore | None] = [None] * len(texts)
    for i, problem in text_problems(texts, max_chars=settings.max_text_chars):
        scores[i] = TextScore.failed(problem)
    usable = [i for i, score in enumerate(scores) if score is None]
    source = source or ("api" if spec.backend == "openai" else "local")
    scorer = get_scorer(spec, settings, source=source)
    url = settings.effective_database_url
    ensure_schema(url)
    with progress_bar(total=len(usable), desc=desc or f"score {spec.model}", unit="text", enabled=show_progress) as bar:
        fresh = score_with_cache(database_url=url, scorer=scorer, labels=labels, multi_label=multi_label,
                                 texts=[texts[i] for i in usable], batch_size=settings.llm_batch_items,
                                 on_batch=bar.update)
    for i, score in zip(usable, fresh):
        scores[i] = score
    return scores


def _score_through_queue(settings, choice: LLMChoice, labels, multi_label, texts, show_progress, timeout):
    from shared.client import FusionqClient
    from shared.evaluation import wait_with_progress

    with FusionqClient(settings) as client:
        job_id = client.submit_llm(texts, labels, multi_label=multi_label, source=choice.source)
        wait_with_progress(client, job_id, total=len(texts), desc=f"score {choice.spec.model}",
                           show_progress=show_progress, timeout=timeout)
        results = client.results(job_id)
    return [TextScore(probabilities=tuple(r.probabilities[n] for n in labels.names), method=r.signals[0].rsplit(":", 1)[-1])
            if r.status == "done" else TextScore.failed(r.error or "failed") for r in results]
