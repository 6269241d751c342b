"""Training the fusion network on frozen features: validation split, early stopping, model
selection and temperature scaling, all on validation data (never on test)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from shared.fusion.calibration import expected_calibration_error, fit_temperature
from shared.fusion.model import FusionConfig, FusionModel
from shared.fusion.predict import decide

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Knobs of :func:`train_fusion`; the defaults suit a few hundred to a few 100k texts."""

    val_fraction: float = 0.15
    hidden_options: tuple[int, ...] = (0, 256)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 0.9:
            raise ValueError("val_fraction must be in (0, 0.9)")
        if not self.hidden_options:
            raise ValueError("hidden_options needs at least one size (0 = linear head)")


@dataclass
class TrainedFusion:
    """A fitted, calibrated fusion network with what was learned while choosing it."""

    model: FusionModel
    temperature: float
    labels: list[str]
    multi_label: bool
    validation: dict = field(default_factory=dict)
    candidates: list[dict] = field(default_factory=list)


def encode_targets(labels: list[list[str]], names: list[str], *, multi_label: bool) -> np.ndarray:
    """Class indices [N] (single-label) or a 0/1 matrix [N, C] (multi-label)."""
    index = {name: i for i, name in enumerate(names)}
    if multi_label:
        y = np.zeros((len(labels), len(names)), dtype=np.float32)
        for row, row_labels in enumerate(labels):
            y[row, [index[n] for n in row_labels]] = 1.0
        return y
    return np.array([index[row_labels[0]] for row_labels in labels], dtype=np.int64)


def split_train_validation(targets: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (by class, or by first label when multi-label) train/validation indices.

    Every class with at least two examples keeps one in each part.
    """
    rng = np.random.default_rng(seed)
    strata = targets if targets.ndim == 1 else targets.argmax(1)
    train, val = [], []
    for cls in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == cls))
        n_val = int(round(len(members) * val_fraction))
        n_val = min(max(n_val, 1 if len(members) >= 2 else 0), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def train_fusion(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    labels: list[str],
    multi_label: bool,
    config: TrainingConfig = TrainingConfig(),
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainedFusion:
    """Fit candidates (one per hidden size), keep the best on validation, calibrate it.

    ``validation`` is an explicit (features, targets) dev set; without it a stratified split
    of ``val_fraction`` is carved from the training data.
    """
    torch.manual_seed(config.seed)
    if validation is None:
        train_idx, val_idx = split_train_validation(targets, val_fraction=config.val_fraction, seed=config.seed)
        x_val, y_val = features[val_idx], targets[val_idx]
        features, targets = features[train_idx], targets[train_idx]
    else:
        x_val, y_val = validation
    x_train, y_train = torch.from_numpy(features), torch.from_numpy(targets)
    x_val_t, y_val_t = torch.from_numpy(x_val), torch.from_numpy(y_val)

    candidates, best = [], None
    for hidden in config.hidden_options:
        fusion_config = FusionConfig(feature_dim=features.shape[1], n_classes=len(labels), hidden=hidden,
                                     multi_label=multi_label)
        model, val_loss, epochs = _fit_one(fusion_config, x_train, y_train, x_val_t, y_val_t, config)
        score = _validation_score(model, x_val_t, y_val, multi_label)
        candidates.append({"hidden": hidden, "val_loss": val_loss, "val_score": score, "epochs": epochs})
        log.info("candidate hidden=%d: val loss %.4f, val score %.4f after %d epochs", hidden, val_loss, score, epochs)
        if best is None or (score, -val_loss) > (best[1], -best[2]):
            best = (model, score, val_loss)
    model = best[0]
    with torch.no_grad():
        val_logits = model(x_val_t)
    temperature = fit_temperature(val_logits, y_val_t, multi_label=multi_label)
    return TrainedFusion(model=model, temperature=temperature, labels=list(labels), multi_label=multi_label,
                         validation=_calibration_report(val_logits, y_val, temperature, multi_label),
                         candidates=candidates)


def _loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, y) if multi_label else F.cross_entropy(logits, y)


def _fit_one(fusion_config, x_train, y_train, x_val, y_val, config: TrainingConfig):
    """Adam with early stopping on validation loss; returns the best epoch's model."""
    model = FusionModel(fusion_config)
    model.set_standardisation(x_train)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(config.batch_size):
            optimiser.zero_grad()
            _loss(model(x_train[batch]), y_train[batch], fusion_config.multi_label).backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(_loss(model(x_val), y_val, fusion_config.multi_label))
        if val_loss < best_loss - 1e-5:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, best_loss, best_epoch


def _validation_score(model: FusionModel, x_val: torch.Tensor, y_val: np.ndarray, multi_label: bool) -> float:
    """Accuracy (single-label) or micro-F1 (multi-label) on validation."""
    with torch.no_grad():
        logits = model(x_val).numpy()
    if not multi_label:
        return float((logits.argmax(1) == y_val).mean())
    predicted = logits > 0
    tp = float((predicted & (y_val > 0.5)).sum())
    return 2 * tp / max(float(predicted.sum() + (y_val > 0.5).sum()), 1.0)


def _calibration_report(val_logits: torch.Tensor, y_val: np.ndarray, temperature: float, multi_label: bool) -> dict:
    """Validation NLL and ECE before and after temperature scaling."""
    report = {"n": int(len(y_val)), "temperature": temperature}
    for name, t in (("raw", 1.0), ("calibrated", temperature)):
        decision = decide(val_logits.numpy() / t, multi_label=multi_label)
        if multi_label:
            correct = (decision.label_matrix == (y_val > 0.5)).all(1)
        else:
            correct = decision.label_matrix.argmax(1) == y_val
        report[f"ece_{name}"] = expected_calibration_error(decision.confidence, correct)
        report[f"accuracy_{name}"] = float(correct.mean())
    return report
