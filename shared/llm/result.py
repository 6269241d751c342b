"""What a scorer returns: per-class probabilities plus, per text, how they were obtained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.vocab import ScoreMethod, values



@dataclass(frozen=True)
class TextScore:
    """The answer for one text. ``probabilities`` is None exactly when ``method == "failed"``."""

    probabilities: tuple[float, ...] | None
    method: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None
    cached: bool = False  # served from the cache: cost_usd is what the original call cost

    def __post_init__(self) -> None:
        if self.method not in values(ScoreMethod):
            raise ValueError(f"method must be one of {values(ScoreMethod)}, got {self.method!r}")
        if (self.probabilities is None) != (self.method == ScoreMethod.FAILED):
            raise ValueError("a failed score has no probabilities; any other has them")

    @property
    def spent_usd(self) -> float:
        """What this answer cost now: nothing when it came from the cache."""
        return 0.0 if self.cached else self.cost_usd

    @classmethod
    def failed(cls, error: str, **usage) -> "TextScore":
        return cls(probabilities=None, method=ScoreMethod.FAILED, error=error, **usage)


@dataclass(frozen=True)
class ScoreBatch:
    """Scores of several texts, in their order."""

    scores: tuple[TextScore, ...]
    n_classes: int

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, C] with zeros where failed, present mask [N])."""
        probs = np.zeros((len(self.scores), self.n_classes), dtype=np.float32)
        present = np.zeros(len(self.scores), dtype=np.float32)
        for i, s in enumerate(self.scores):
            if s.probabilities is not None:
                probs[i] = s.probabilities
                present[i] = 1.0
        return probs, present

    @property
    def cost_usd(self) -> float:
        return sum(s.spent_usd for s in self.scores)
