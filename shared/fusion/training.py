"""Training the fusion network: validation split, early stopping, model selection, modality dropout
and temperature scaling per signal pattern, all on validation data (never on test)."""

from __future__ import annotations

import itertools
import logging
import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from shared.fusion.calibration import fit_label_thresholds, fit_temperature
from shared.fusion.model import ENCODER_ONLY_PATTERN, FusionConfig, FusionModel, merge_members, pattern_key
from shared.fusion.predict import decide
from shared.metrics import MULTI_LABEL_ECE_NOTE, calibration_errors, correct_rows, score_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Knobs of :func:`train_fusion`; the defaults suit a few hundred to a few 100k texts."""

    val_fraction: float = 0.15
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int | None = None  # None: about 100 steps per epoch, between 64 and 1024 examples
    max_epochs: int = 100
    patience: int = 8
    min_improvement: float = 1e-4  # validation loss must drop by this much to count as progress
    dropout: float = 0.1
    llm_dropout: float = 0.5  # chance that a present LLM source is hidden from a training example
    seed: int = 0
    device: str | None = None  # where to train (None: CUDA when available); the result always lives on CPU
    # Share of the validation rows the search never sees, kept for temperature scaling, thresholds and
    # the reported validation figure (see shared.fusion.search.split_validation); 0: one set does all.
    calibration_share: float = 0.5
    # Networks (different seeds) averaged in the chosen model: the search compares single networks,
    # then the winner is fitted this many times (shared.fusion.search.choose). Five measured +0.15 to
    # +1.07 points of test accuracy on every shared dataset against one (docs/BENCHMARKS.md, issue 13).
    ensemble: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 0.9:
            raise ValueError("val_fraction must be in (0, 0.9)")
        if not 0.0 <= self.calibration_share < 0.9:
            raise ValueError("calibration_share must be in [0, 0.9)")
        if self.ensemble < 1:
            raise ValueError("ensemble must be at least 1")
        if not 0.0 <= self.llm_dropout < 1.0:
            raise ValueError("llm_dropout must be in [0, 1)")


@dataclass(frozen=True)
class Candidate:
    """One architecture to try: how feature blocks are fused and how big the head is."""

    operator: str = "concat"
    width: int = 0
    hidden: int = 256

    @property
    def name(self) -> str:
        fuse = "raw concat" if not self.width else f"{self.operator} w{self.width}"
        return f"{fuse}, {'linear head' if not self.hidden else f'MLP {self.hidden}'}"

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_CANDIDATES = (Candidate(hidden=0), Candidate(hidden=256))


@dataclass(frozen=True)
class Signals:
    """What the fusion network sees for N texts: features [N, D] and, optionally, LLM scores
    [N, S, C] with their present mask [N, S]."""

    features: np.ndarray
    llm_scores: np.ndarray | None = None
    llm_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, index: np.ndarray) -> "Signals":
        pick = (lambda a: None if a is None else a[index])
        return Signals(self.features[index], pick(self.llm_scores), pick(self.llm_mask))

    def tensors(self, *, pattern: tuple[bool, ...] | None = None):
        """(features, scores, mask) tensors; ``pattern`` hides the sources it marks False."""
        x = torch.from_numpy(np.ascontiguousarray(self.features, dtype=np.float32))
        if self.llm_scores is None:
            return x, None, None
        mask = torch.from_numpy(np.ascontiguousarray(self.llm_mask, dtype=np.float32))
        if pattern is not None:
            mask = mask * torch.tensor(pattern, dtype=torch.float32)
        return x, torch.from_numpy(np.ascontiguousarray(self.llm_scores, dtype=np.float32)), mask


@dataclass
class TrainedFusion:
    """A fitted, calibrated fusion network with what was learned while choosing it."""

    model: FusionModel
    temperatures: dict[str, float]
    labels: list[str]
    multi_label: bool
    label_thresholds: list[float] | None = None
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


def all_patterns(sources: tuple[str, ...]) -> list[tuple[bool, ...]]:
    """Every subset of the sources, the encoder-only pattern first."""
    return sorted(itertools.product((False, True), repeat=len(sources)), key=sum)


def train_fusion(
    train: Signals,
    targets: np.ndarray,
    *,
    labels: list[str],
    multi_label: bool,
    block_dims: tuple[int, ...] | None = None,
    llm_sources: tuple[str, ...] = (),
    candidates: tuple[Candidate, ...] = DEFAULT_CANDIDATES,
    config: TrainingConfig = TrainingConfig(),
    validation: tuple[Signals, np.ndarray] | None = None,
    calibration: tuple[Signals, np.ndarray] | None = None,
    members: int = 1,
) -> TrainedFusion:
    """Fit every candidate, keep the best on validation, calibrate it per signal pattern.

    ``validation`` is an explicit dev set; without it a stratified ``val_fraction`` split is carved
    from the training data. ``calibration``: rows that neither early stopping nor the choice of
    candidate saw; the temperatures, thresholds and validation report come from them (without it,
    from ``validation``, which then flatters the result: it chose the model). With LLM sources, training hides each present source with probability
    ``config.llm_dropout`` and selection averages the encoder-only and all-signals scores, so one
    network serves every mode. ``members`` > 1: each candidate is that many networks from different
    seeds, their logits averaged.
    """
    if isinstance(train, np.ndarray):
        train = Signals(train)
    torch.manual_seed(config.seed)
    if validation is None:
        train_idx, val_idx = split_train_validation(targets, val_fraction=config.val_fraction, seed=config.seed)
        validation = (train.subset(val_idx), targets[val_idx])
        train, targets = train.subset(train_idx), targets[train_idx]
    val, y_val = validation
    if isinstance(val, np.ndarray):
        val = Signals(val)
    block_dims = tuple(block_dims or (train.features.shape[1],))

    results, best = [], None
    for candidate in candidates:
        fusion_config = FusionConfig(block_dims=block_dims, n_classes=len(labels), llm_sources=llm_sources,
                                     operator=candidate.operator, width=candidate.width, hidden=candidate.hidden,
                                     dropout=config.dropout, multi_label=multi_label)
        model, val_loss, epochs = fit_members(fusion_config, train, targets, val, y_val, config, members)
        score = selection_score(model, val, y_val)
        results.append({**candidate.to_dict(), "name": candidate.name, "val_loss": round(val_loss, 5),
                        "val_score": round(score, 5), "epochs": epochs})
        log.info("candidate %s: val loss %.4f, val score %.4f after %d epochs", candidate.name, val_loss, score, epochs)
        if best is None or selection_key(score, val_loss) > selection_key(best[1], best[2]):
            best = (model, score, val_loss)
    if calibration is not None:
        val, y_val = calibration
    return calibrate(best[0], val, y_val, labels=labels, candidates=results)


def calibrate(model: FusionModel, val: Signals | np.ndarray, y_val: np.ndarray, *, labels: list[str],
              candidates: list[dict]) -> TrainedFusion:
    """``model`` with its per-pattern temperatures, label thresholds (multi-label) and validation
    report, all fitted on (``val``, ``y_val``)."""
    val = Signals(val) if isinstance(val, np.ndarray) else val
    multi_label = model.config.multi_label
    temperatures = fit_pattern_temperatures(model, val, y_val)
    thresholds = None
    if multi_label:
        fast_logits = logits_of(model, val, pattern=(False,) * len(model.config.llm_sources))
        thresholds = fit_label_thresholds(
            decide(fast_logits / temperatures[ENCODER_ONLY_PATTERN], multi_label=True).probabilities, y_val)
    return TrainedFusion(model=model, temperatures=temperatures, labels=list(labels), multi_label=multi_label,
                         label_thresholds=thresholds,
                         validation=validation_report(model, val, y_val, temperatures, thresholds),
                         candidates=candidates)


def selection_key(score: float, val_loss: float) -> tuple[float, float]:
    """Larger is better: validation score (accuracy / micro-F1), then lower loss."""
    return (score, -val_loss)


def _loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, y) if multi_label else F.cross_entropy(logits, y)


def fit_one(fusion_config: FusionConfig, train: Signals, y_train: np.ndarray, val: Signals, y_val: np.ndarray,
            config: TrainingConfig) -> tuple[FusionModel, float, int]:
    """AdamW with modality dropout and early stopping on validation loss; returns the best epoch's model."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    to_device = (lambda t: None if t is None else t.to(device))  # noqa: E731
    model = FusionModel(fusion_config)
    x, scores, mask = (to_device(t) for t in train.tensors())
    y = to_device(torch.from_numpy(y_train))
    model.set_standardisation(x)
    model.to(device)
    val_patterns = _selection_patterns(fusion_config.llm_sources)
    val_tensors = [tuple(to_device(t) for t in val.tensors(pattern=p)) for p in val_patterns]
    y_val_t = to_device(torch.from_numpy(y_val))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = config.batch_size or int(np.clip(len(x) // 100, 64, 1024))
    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            batch = batch.to(device)
            batch_mask = None
            if mask is not None:  # modality dropout: hide present sources at random
                keep = torch.rand(tuple(mask[batch].shape), generator=generator) >= config.llm_dropout
                batch_mask = mask[batch] * keep.to(device)
            optimiser.zero_grad()
            logits = model(x[batch], None if scores is None else scores[batch], batch_mask)
            _loss(logits, y[batch], fusion_config.multi_label).backward()
            optimiser.step()
        model.eval()
        val_loss = _validation_loss(model, val_tensors, y_val_t, fusion_config.multi_label)
        if val_loss < best_loss - config.min_improvement:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.to("cpu")
    model.load_state_dict(best_state)
    model.eval()
    return model, best_loss, best_epoch


def fit_members(fusion_config: FusionConfig, train: Signals, y_train: np.ndarray, val: Signals, y_val: np.ndarray,
                config: TrainingConfig, members: int,
                first: tuple[FusionModel, float, int] | None = None) -> tuple[FusionModel, float, int]:
    """:func:`fit_one` for ``members`` seeds (config.seed, +1, ...) merged into one logit-averaging
    model: (model, its validation loss, the members' largest best epoch). ``first``: a network
    already fitted on the same rows (the search's winner), :func:`fit_one`'s result, taken as the
    first member instead of fitting seed config.seed again."""
    if members == 1:
        return first or fit_one(fusion_config, train, y_train, val, y_val, config)
    fitted = [first] if first else []
    for k in range(len(fitted), members):
        torch.manual_seed(config.seed + k)
        fitted.append(fit_one(fusion_config, train, y_train, val, y_val, dataclasses.replace(config, seed=config.seed + k)))
    model = merge_members([m for m, _, _ in fitted])
    patterns = _selection_patterns(fusion_config.llm_sources)
    val_loss = _validation_loss(model, [val.tensors(pattern=p) for p in patterns], torch.from_numpy(y_val),
                                fusion_config.multi_label)
    return model, val_loss, max(e for _, _, e in fitted)


def _validation_loss(model: FusionModel, val_tensors: list[tuple], y_val: torch.Tensor, multi_label: bool) -> float:
    """Mean loss over the selection patterns' validation tensors (what early stopping watches)."""
    with torch.no_grad():
        return float(np.mean([float(_loss(model(*t), y_val, multi_label)) for t in val_tensors]))


def _selection_patterns(sources: tuple[str, ...]) -> list[tuple[bool, ...] | None]:
    """Encoder-only and all-present (None: the observed mask); just the first without sources."""
    return [(False,) * len(sources), None] if sources else [None]


def logits_of(model: FusionModel, signals: Signals, *, pattern: tuple[bool, ...] | None = None) -> np.ndarray:
    with torch.no_grad():
        return model(*signals.tensors(pattern=pattern)).numpy()


def selection_score(model: FusionModel, val: Signals, y_val: np.ndarray) -> float:
    """Mean validation score over the encoder-only and all-signals patterns."""
    patterns = _selection_patterns(model.config.llm_sources)
    return float(np.mean([score_logits(logits_of(model, val, pattern=p), y_val, model.config.multi_label)
                          for p in patterns]))


def fit_pattern_temperatures(model: FusionModel, val: Signals, y_val: np.ndarray) -> dict[str, float]:
    """One temperature per signal pattern, fitted on the validation rows where that pattern's sources
    are all present (the others hidden); a pattern with no such row keeps the encoder-only one."""
    sources = model.config.llm_sources
    temperatures: dict[str, float] = {}
    for pattern in all_patterns(sources):
        rows = np.ones(len(val), dtype=bool)
        if any(pattern):
            rows = (val.llm_mask[:, list(pattern)] > 0.5).all(1)
        if not rows.any():
            temperatures[pattern_key(pattern, sources)] = temperatures[ENCODER_ONLY_PATTERN]
            continue
        logits = logits_of(model, val.subset(np.flatnonzero(rows)), pattern=pattern)
        temperatures[pattern_key(pattern, sources)] = fit_temperature(
            torch.from_numpy(logits), torch.from_numpy(y_val[rows]), multi_label=model.config.multi_label)
    return temperatures


def validation_report(model: FusionModel, val: Signals, y_val: np.ndarray, temperatures: dict[str, float],
                      thresholds: list[float] | None) -> dict:
    """Validation accuracy and ECE before and after calibration, per signal pattern.

    The top-level keys describe the encoder-only pattern (the fast path)."""
    sources = model.config.llm_sources
    multi_label = model.config.multi_label
    per_pattern = {}
    for pattern in all_patterns(sources):
        key = pattern_key(pattern, sources)
        logits = logits_of(model, val, pattern=pattern)
        row = {"n": int(len(y_val)), "temperature": temperatures[key]}
        for name, t in (("raw", 1.0), ("calibrated", temperatures[key])):
            decision = decide(logits / t, multi_label=multi_label, threshold=thresholds or 0.5)
            correct = correct_rows(decision.label_matrix, y_val, multi_label)
            for metric, value in calibration_errors(decision.confidence, correct, multi_label=multi_label,
                                                    probabilities=decision.probabilities, targets=y_val).items():
                row[f"{metric}_{name}"] = round(value, 5)  # multi-label: ece per label, + ece_exact_match
            row[f"accuracy_{name}"] = round(float(correct.mean()), 5)
        # how far the test figure may sit from this one by chance alone (binomial, one standard error)
        accuracy = row["accuracy_calibrated"]
        row["accuracy_se"] = round(float(np.sqrt(accuracy * (1 - accuracy) / max(len(y_val), 1))), 5)
        per_pattern[key] = row
    note = {"ece_note": MULTI_LABEL_ECE_NOTE} if multi_label else {}
    return {**per_pattern[ENCODER_ONLY_PATTERN], **note, "patterns": per_pattern}
