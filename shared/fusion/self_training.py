"""Self-training on unlabelled texts: the fitted classifier labels the texts it is sure of, and the
chosen network is fitted again on the labelled and the pseudo-labelled rows together.

"Sure" is measured, not guessed: the confidence cut is the lowest at which the calibration rows
(labelled, unseen by the search) are at least ``target_accuracy`` right, so a hard task keeps
fewer pseudo-labels than an easy one. The refit keeps the winner's architecture, stops early on
the selection rows and is calibrated on the calibration rows like the first fit; it replaces the
first fit only when its selection score is at least as good.

With a fine-tuned backbone the round goes further (``AutoFusionClassifier.fit``): the backbone is
fine-tuned again from its base on the labelled and the pseudo-labelled texts together ("noisy
student": the pseudo-labels come from the first tuned backbone and its calibrated network), and
the layer and fusion search runs again on the new backbone; the same rule decides which is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.fusion.escalation import threshold_for_accuracy
from shared.fusion.model import ENCODER_ONLY_PATTERN
from shared.fusion.predict import decide
from shared.fusion.training import Candidate, TrainedFusion, TrainingConfig, logits_of, Signals, train_fusion
from shared.metrics import correct_rows

DEFAULT_TARGET_ACCURACY = 0.95


@dataclass(frozen=True)
class PseudoLabels:
    index: np.ndarray  # rows of the unlabelled set that were kept
    features: np.ndarray
    targets: np.ndarray  # class indices [N], or a 0/1 matrix [N, C] when multi-label
    threshold: float
    offered: int


def pseudo_label(trained: TrainedFusion, unlabeled: np.ndarray, calibration: tuple[np.ndarray, np.ndarray], *,
                 target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> PseudoLabels:
    """The unlabelled rows whose calibrated confidence reaches the cut that makes the calibration
    rows ``target_accuracy`` right, with the labels the classifier gives them."""
    temperature = trained.temperatures[ENCODER_ONLY_PATTERN]
    threshold = trained.label_thresholds or 0.5

    def decision(x: np.ndarray):
        return decide(logits_of(trained.model, Signals(x)) / temperature, multi_label=trained.multi_label,
                      threshold=threshold)

    cal_x, cal_y = calibration
    cal = decision(cal_x)
    cut = threshold_for_accuracy(cal.confidence, correct_rows(cal.label_matrix, cal_y, trained.multi_label),
                                 target_accuracy)
    mine = decision(unlabeled)
    keep = np.flatnonzero(mine.confidence >= cut)
    targets = (mine.label_matrix[keep].astype(np.float32) if trained.multi_label
               else mine.label_matrix[keep].argmax(1).astype(np.int64))
    return PseudoLabels(index=keep, features=unlabeled[keep], targets=targets, threshold=float(cut), offered=len(unlabeled))


def self_train(trained: TrainedFusion, candidate: Candidate, train: tuple[np.ndarray, np.ndarray],
               selection: tuple[np.ndarray, np.ndarray], calibration: tuple[np.ndarray, np.ndarray],
               unlabeled: np.ndarray, *, block_dims: tuple[int, ...], config: TrainingConfig,
               target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> tuple[TrainedFusion, dict]:
    """One round of self-training of ``trained`` (architecture ``candidate``); (the better fit, report)."""
    pseudo = pseudo_label(trained, unlabeled, calibration, target_accuracy=target_accuracy)
    x, y = train
    refit = train_fusion(np.concatenate([x, pseudo.features]), np.concatenate([y, pseudo.targets]),
                         labels=trained.labels, multi_label=trained.multi_label, block_dims=block_dims,
                         candidates=(candidate,), config=config, validation=selection, calibration=calibration,
                         members=config.ensemble)
    before = max(c["val_score"] for c in trained.candidates if _same(c, candidate))
    after = refit.candidates[0]["val_score"]
    return (refit if after >= before else trained), round_report(pseudo, target_accuracy, before, after)


def round_report(pseudo: PseudoLabels, target_accuracy: float, before: float, after: float) -> dict:
    """The report of a self-training round; the refit is kept when its selection score is not lower."""
    return {"offered": pseudo.offered, "pseudo_labelled": len(pseudo.targets),
            "confidence_cut": round(pseudo.threshold, 5), "target_accuracy": target_accuracy,
            "selection_score_before": before, "selection_score_after": after, "kept": after >= before}


def _same(row: dict, candidate: Candidate) -> bool:
    return (row["operator"], row["width"], row["hidden"]) == (candidate.operator, candidate.width, candidate.hidden)
