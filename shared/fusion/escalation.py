"""Escalation policy learned on validation: which fast-path confidence sends an item to the LLM path.

An item is kept by the fast path when its calibrated confidence is >= the threshold and escalated
otherwise. The threshold meets one target, chosen by the user: the share of items escalated, or
the accuracy of the items the fast path keeps. The whole trade-off curve is stored too, so the
serving side can pick another point per job (a budget) without retraining.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shared.metrics import correct_rows


@dataclass(frozen=True)
class EscalationTarget:
    """Exactly one of: ``share`` of items sent to the LLM path, or ``kept_accuracy`` of the rest."""

    share: float | None = 0.2
    kept_accuracy: float | None = None

    def __post_init__(self) -> None:
        if (self.share is None) == (self.kept_accuracy is None):
            raise ValueError("give exactly one escalation target: share or kept_accuracy")
        value = self.share if self.share is not None else self.kept_accuracy
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"escalation target must be in [0, 1], got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_for_share(confidence: np.ndarray, share: float) -> float:
    """The lowest threshold escalating at most ``share`` of the items (those with confidence below it)."""
    confidence = np.sort(np.asarray(confidence, dtype=np.float64))
    n_escalated = int(np.floor(share * len(confidence) + 1e-9))
    if n_escalated <= 0 or not len(confidence):
        return 0.0
    if n_escalated >= len(confidence):
        return float(np.nextafter(confidence[-1], np.inf))
    # Items tied with the cut stay on the fast path (strictly below escalates): never above the share.
    return float(confidence[n_escalated])


def threshold_for_accuracy(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest threshold whose kept items (confidence >= it) are at least ``target`` accurate.

    When even the single most confident group misses the target, every item escalates.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return 0.0
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    # Evaluate only at the end of each group of equal confidences: ties are kept or escalated together.
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    accuracy = hits[ends] / (ends + 1)
    meeting = np.flatnonzero(accuracy >= target - 1e-12)
    if not len(meeting):
        return float(np.nextafter(conf[0], np.inf))
    return float(conf[ends[meeting[-1]]])


def choose_threshold(target: EscalationTarget, confidence: np.ndarray, correct: np.ndarray) -> float:
    if target.share is not None:
        return threshold_for_share(confidence, target.share)
    return threshold_for_accuracy(confidence, correct, target.kept_accuracy)


def escalation_curve(confidence: np.ndarray, correct_fast: np.ndarray, correct_fused: np.ndarray | None = None,
                     *, llm_cost_per_item: float = 0.0, shares: np.ndarray | None = None) -> list[dict]:
    """The accuracy/cost trade-off on validation, one point per share of items escalated.

    ``correct_fused``: per item, whether the prediction with every LLM signal is right (None
    without LLM sources: the overall accuracy is then unknown and reported as None).
    """
    shares = np.round(np.linspace(0, 1, 21), 2) if shares is None else shares
    correct_fast = np.asarray(correct_fast, dtype=bool)
    points = []
    for share in shares:
        threshold = threshold_for_share(confidence, float(share))
        escalated = np.asarray(confidence) < threshold
        kept = ~escalated
        overall = None
        if correct_fused is not None:
            overall = float(np.where(escalated, correct_fused, correct_fast).mean())
        points.append({
            "target_share": float(share), "threshold": threshold, "escalated_share": float(escalated.mean()),
            "kept_accuracy": float(correct_fast[kept].mean()) if kept.any() else None,
            "overall_accuracy": overall,
            "llm_cost_per_1000": round(float(escalated.mean()) * 1000 * llm_cost_per_item, 6),
        })
    return points


def calibrate_escalation(artifact, target: EscalationTarget, features: np.ndarray, y_val: np.ndarray, *,
                         llm_scores: np.ndarray | None = None, llm_mask: np.ndarray | None = None,
                         llm_cost_per_text: float = 0.0) -> dict:
    """The threshold meeting ``target`` on the artifact's calibrated fast-path validation predictions, and
    the whole trade-off curve (with the fused predictions' accuracy when LLM scores are given)."""
    fast = artifact.decide(features)
    correct_fast = correct_rows(fast.label_matrix, y_val, artifact.multi_label)
    correct_fused = None
    if llm_scores is not None:
        fused = artifact.decide(features, llm_scores, llm_mask)
        correct_fused = correct_rows(fused.label_matrix, y_val, artifact.multi_label)
    threshold = choose_threshold(target, fast.confidence, correct_fast)
    kept = fast.confidence >= threshold
    kept_accuracy = float(correct_fast[kept].mean()) if kept.any() else None
    return {
        "target": target.to_dict(), "threshold": threshold,
        "validation_escalated_share": float((~kept).mean()),
        # the promise, counted on the kept rows, and its binomial standard error: on a few hundred
        # calibration rows it is one or two points (issue 13: MR, 425 kept rows, ± 1.9)
        "validation_kept_accuracy": kept_accuracy,
        "validation_kept_n": int(kept.sum()),
        "validation_kept_accuracy_se": (float(np.sqrt(kept_accuracy * (1 - kept_accuracy) / kept.sum()))
                                        if kept.any() else None),
        "validation_size": int(len(y_val)),
        "llm_cost_per_text_usd": llm_cost_per_text,
        "curve": escalation_curve(fast.confidence, correct_fast, correct_fused, llm_cost_per_item=llm_cost_per_text),
    }
