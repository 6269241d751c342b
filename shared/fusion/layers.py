"""Layer-aware selection (seeds 001/002): how well each hidden layer alone classifies, on validation.

A linear probe (the fusion network with a linear head) is fitted per layer on the training split
and scored on the validation split; test data never takes part.
"""

from __future__ import annotations

import numpy as np

from shared.fusion.training import Candidate, TrainingConfig, train_fusion

LINEAR_PROBE = (Candidate(hidden=0),)


def probe_layers(train: dict[int, np.ndarray], y_train: np.ndarray, val: dict[int, np.ndarray], y_val: np.ndarray,
                 *, labels: list[str], multi_label: bool, config: TrainingConfig = TrainingConfig(),
                 on_layer=None) -> list[dict]:
    """Validation score (accuracy, or micro-F1 when multi-label) of a linear probe on each layer."""
    rows = []
    for layer in sorted(train):
        trained = train_fusion(train[layer], y_train, labels=labels, multi_label=multi_label,
                               candidates=LINEAR_PROBE, config=config, validation=(val[layer], y_val))
        candidate = trained.candidates[0]
        rows.append({"layer": layer, "val_score": candidate["val_score"], "val_loss": candidate["val_loss"],
                     "epochs": candidate["epochs"], "ece_calibrated": trained.validation["ece_calibrated"]})
        if on_layer:
            on_layer(1)
    return rows


def rank_layers(rows: list[dict]) -> list[int]:
    """Layers best first (ties: the deeper layer, which needs no extra forward pass beyond it anyway)."""
    return [r["layer"] for r in sorted(rows, key=lambda r: (r["val_score"], -r["val_loss"], r["layer"]), reverse=True)]
