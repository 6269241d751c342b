"""From logits to probabilities, labels and one confidence per item (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    """Probabilities [N, C], the chosen labels as a 0/1 matrix [N, C], and confidence [N]."""

    probabilities: np.ndarray
    label_matrix: np.ndarray
    confidence: np.ndarray


def decide(logits: np.ndarray, *, multi_label: bool, threshold: float | list[float] | np.ndarray = 0.5) -> Decision:
    """Calibrated logits -> decision.

    Single-label: softmax, argmax, confidence = top probability. Multi-label: sigmoid, every
    class at or above ``threshold`` (one number, or one per class; at least the most likely
    class is chosen), confidence = the least certain per-class decision, min over classes of
    max(p, 1 - p).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        probs = 1.0 / (1.0 + np.exp(-logits))
        chosen = probs >= np.asarray(threshold, dtype=np.float64)
        chosen[np.arange(len(probs)), probs.argmax(1)] = True
        confidence = np.maximum(probs, 1.0 - probs).min(1) if probs.size else np.zeros(0)
    else:
        shifted = np.exp(logits - logits.max(1, keepdims=True))
        probs = shifted / shifted.sum(1, keepdims=True)
        chosen = np.zeros_like(probs, dtype=bool)
        chosen[np.arange(len(probs)), probs.argmax(1)] = True
        confidence = probs.max(1) if probs.size else np.zeros(0)
    return Decision(probabilities=probs, label_matrix=chosen, confidence=confidence)


def decide_from_probabilities(probabilities: np.ndarray, *, multi_label: bool,
                              threshold: float | list[float] | np.ndarray = 0.5) -> Decision:
    """Probabilities that are already calibrated (e.g. an LLM's) -> decision, same rules as :func:`decide`."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    logits = np.log(p / (1 - p)) if multi_label else np.log(p)
    return decide(logits, multi_label=multi_label, threshold=threshold)
