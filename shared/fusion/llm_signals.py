"""Gathering LLM signals for fusion: per-class scores of N texts from S sources, and their cost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.llm.result import TextScore
from shared.vocab import ScoreMethod

# Scores ``texts`` with one source, in order (through a cache, in whatever process it likes).
ScoreTexts = Callable[[list[str]], list[TextScore]]


@dataclass(frozen=True)
class LLMUsage:
    """LLM scores of N texts from S sources, and what getting them cost."""

    scores: np.ndarray  # [N, S, C], zeros where failed
    mask: np.ndarray  # [N, S]
    calls: int  # questions actually sent (cache hits excluded)
    questions: int  # questions needed, cache hits included
    spent_usd: float
    cost_by_source: list[float]  # what the answers cost at recorded prices, cache hits included
    failed: int

    @property
    def cost_per_text(self) -> float:
        """Sum over sources of the mean cost of one answer."""
        return sum(self.cost_by_source) / max(len(self.scores), 1)


def gather_llm_signals(scorers: Sequence[ScoreTexts], texts: list[str], n_classes: int) -> LLMUsage:
    """Every source's scores of ``texts`` (one scorer per source, in source order)."""
    scores = np.zeros((len(texts), len(scorers), n_classes), dtype=np.float32)
    mask = np.zeros((len(texts), len(scorers)), dtype=np.float32)
    calls = failed = 0
    spent, cost_by_source = 0.0, []
    for s, score_texts in enumerate(scorers):
        answers = score_texts(texts)
        for i, answer in enumerate(answers):
            if answer.probabilities is not None:
                scores[i, s] = answer.probabilities
                mask[i, s] = 1.0
        calls += sum(not a.cached for a in answers)
        failed += sum(a.method == ScoreMethod.FAILED for a in answers)
        spent += sum(a.spent_usd for a in answers)
        cost_by_source.append(float(sum(a.cost_usd for a in answers)))
    return LLMUsage(scores=scores, mask=mask, calls=calls, questions=len(texts) * len(scorers), spent_usd=spent,
                    cost_by_source=cost_by_source, failed=failed)
