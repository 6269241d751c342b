"""Choosing what the fusion network reads: layers per encoder, then the fusion operator and head.

Every choice is made on validation data. Layers are ranked by a linear probe; the 1, 2 and 3
best per encoder are tried, each with raw concatenation (linear and MLP head) and the projected
operators: a bounded number of fits, never every subset.

The validation rows are split in two (``TrainingConfig.calibration_share``): the search (early
stopping, probes, the choice) sees only the *selection* part; temperature scaling, label
thresholds, the escalation threshold and the validation figure the fit reports use the
*calibration* part, which had no say in the choice. A figure measured on the rows that picked
the winner among ~20 candidates is biased upwards, and a temperature fitted there leaves the
model over-confident on new data (issue 13: MR's validation said 0.80, test gave 0.76, ECE 0.036).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.encoders.hf import get_encoder
from shared.encoders.spec import EncoderSpec
from shared.fusion.layers import probe_layers, rank_layers
from shared.fusion.operators import OPERATORS
from shared.fusion.training import (
    DEFAULT_CANDIDATES, Candidate, Signals, TrainedFusion, TrainingConfig, calibrate, fit_members, selection_key,
    selection_score, split_train_validation, train_fusion,
)
from shared.progress import progress_bar

# (encoder index, layer): one block of features.
Block = tuple[int, int]
# Per encoder: {layer: [train features, validation features]}.
LayerFeatures = dict[int, list[np.ndarray]]

# Below this many calibration rows a split would leave both parts too small to trust: one set does all.
MIN_CALIBRATION_ROWS = 100


@dataclass(frozen=True)
class EncodeOptions:
    device: str | None
    max_tokens: int | None  # None: sized for the device
    max_batch: int | None
    show_progress: bool = False


def layer_features(spec: EncoderSpec, texts: list[str], val_texts: list[str], *, all_layers: bool,
                   options: EncodeOptions) -> LayerFeatures:
    """{layer: (train features, validation features)} for every layer the selection may use."""
    encoder = get_encoder(spec, device=options.device)
    layers = encoder.layer_indices() if all_layers else spec.layers
    reader = encoder.with_layers(tuple(layers))
    out: LayerFeatures = {}
    for part, part_texts in (("train", texts), ("validation", val_texts)):
        with progress_bar(total=len(part_texts), desc=f"encode {part} ({spec.short_name})", unit="text",
                          enabled=options.show_progress) as bar:
            features = reader.encode(part_texts, max_tokens=options.max_tokens, max_batch=options.max_batch,
                                     on_batch=bar.update)
        for j, layer in enumerate(layers):
            out.setdefault(layer, []).append(features[:, j * encoder.hidden_size:(j + 1) * encoder.hidden_size])
    return out


def block_sets(features: list[LayerFeatures], y: np.ndarray, y_val: np.ndarray, *, labels: list[str],
               multi_label: bool, auto: bool, names: list[str], training: TrainingConfig,
               show_progress: bool = False) -> tuple[list[list[Block]], list[dict]]:
    """Candidate block lists (the given layers, or the 1, 2 and 3 best per encoder) and the probe report."""
    if not auto:
        return [[(i, layer) for i, feats in enumerate(features) for layer in feats]], []
    rankings, report = [], []
    for i, feats in enumerate(features):
        with progress_bar(total=len(feats), desc="probe layers", unit="layer", enabled=show_progress) as bar:
            rows = probe_layers({l: f[0] for l, f in feats.items()}, y, {l: f[1] for l, f in feats.items()},
                                y_val, labels=labels, multi_label=multi_label, config=training, on_layer=bar.update)
        report.append({"encoder": names[i], "rows": rows})
        rankings.append(rank_layers(rows))
    sets: list[list[Block]] = []
    for k in (1, 2, 3):
        blocks = [(i, layer) for i, ranking in enumerate(rankings) for layer in ranking[:k]]
        if blocks not in sets:
            sets.append(blocks)
    return sets, report


def candidates_for(n_blocks: int, *, fusion: str, width: int) -> tuple[Candidate, ...]:
    """Heads and operators worth trying on ``n_blocks`` blocks under the ``fusion`` choice."""
    if n_blocks == 1 or fusion == "concat":
        return DEFAULT_CANDIDATES
    operators = OPERATORS if fusion == "auto" else (fusion,)
    projected = tuple(Candidate(op, width, 0) for op in operators if op != "concat")
    return (DEFAULT_CANDIDATES if "concat" in operators else ()) + projected


def split_validation(y_val: np.ndarray, training: TrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(selection rows, calibration rows) of the validation set: a stratified ``calibration_share``
    for calibration; both are every row when that share is 0 or would be under MIN_CALIBRATION_ROWS."""
    every = np.arange(len(y_val))
    if training.calibration_share <= 0 or len(y_val) * training.calibration_share < MIN_CALIBRATION_ROWS:
        return every, every
    return split_train_validation(y_val, val_fraction=training.calibration_share, seed=training.seed + 1)


@dataclass
class Choice:
    """What the search chose, with what it tried: the fitted, calibrated winner and its feature blocks."""

    trained: TrainedFusion
    blocks: list[Block]
    rows: list[dict]  # every candidate fitted, the winner marked ``chosen``
    layer_report: list[dict] = field(default_factory=list)
    selection_rows: np.ndarray | None = None  # indices into the validation set
    calibration_rows: np.ndarray | None = None


def validation_subset(features: list[LayerFeatures], rows: np.ndarray) -> list[LayerFeatures]:
    """The same features with the validation part narrowed to ``rows``."""
    return [{layer: [f[0], f[1][rows]] for layer, f in feats.items()} for feats in features]


def choose(features: list[LayerFeatures], y: np.ndarray, y_val: np.ndarray, *, labels: list[str], multi_label: bool,
           auto: bool, names: list[str], fusion: str, width: int, training: TrainingConfig,
           show_progress: bool = False) -> Choice:
    """Probe layers, fit the candidates and calibrate the winner, with the validation rows split
    between the search and the calibration as the module docstring says."""
    selection_rows, calibration_rows = split_validation(y_val, training)
    search = validation_subset(features, selection_rows)
    y_sel = y_val[selection_rows]
    sets, layer_report = block_sets(search, y, y_sel, labels=labels, multi_label=multi_label, auto=auto,
                                    names=names, training=training, show_progress=show_progress)
    calibration = validation_subset(features, calibration_rows)
    trained, blocks, rows = select(search, sets, y, y_sel, labels=labels, multi_label=multi_label, fusion=fusion,
                                   width=width, training=training, show_progress=show_progress,
                                   calibration=(calibration, y_val[calibration_rows]))
    if training.ensemble > 1:
        trained = widen(search, calibration, blocks, rows, trained, y, y_sel, y_val[calibration_rows], labels=labels,
                        training=training, show_progress=show_progress)
    return Choice(trained=trained, blocks=blocks, rows=rows, layer_report=layer_report,
                  selection_rows=selection_rows, calibration_rows=calibration_rows)


def select(features: list[LayerFeatures], sets: list[list[Block]], y: np.ndarray, y_val: np.ndarray, *,
           labels: list[str], multi_label: bool, fusion: str, width: int, training: TrainingConfig,
           show_progress: bool = False,
           calibration: tuple[list[LayerFeatures], np.ndarray] | None = None,
           ) -> tuple[TrainedFusion, list[Block], list[dict]]:
    """Fit every block set x candidate; keep the best on validation (ties: lower loss, then fewer blocks).

    ``calibration``: features and targets the winner is calibrated on. (A one-standard-error rule,
    fewest blocks within one SE of the top, was measured and lost up to 1.7 points: BENCHMARKS.)"""
    rows, fitted = [], []
    total = sum(len(candidates_for(len(b), fusion=fusion, width=width)) for b in sets)
    with progress_bar(total=total, desc="select fusion", unit="fit", enabled=show_progress) as bar:
        for blocks in sets:
            train_x, dims = stack(features, blocks, 0)
            val_x, _ = stack(features, blocks, 1)
            candidates = candidates_for(len(blocks), fusion=fusion, width=width)
            cal = None if calibration is None else (stack(calibration[0], blocks, 1)[0], calibration[1])
            trained = train_fusion(train_x, y, labels=labels, multi_label=multi_label, block_dims=dims,
                                   candidates=candidates, config=training, validation=(val_x, y_val), calibration=cal)
            bar.update(len(candidates))
            name = "+".join(f"L{l}" if len(features) == 1 else f"e{i}L{l}" for i, l in blocks)
            for row in trained.candidates:
                rows.append({**row, "blocks": name, "n_blocks": len(blocks), "chosen": False})
            top = max(range(len(rows) - len(trained.candidates), len(rows)),
                      key=lambda j: selection_key(rows[j]["val_score"], rows[j]["val_loss"]))
            fitted.append((trained, blocks, top))
    keys = [selection_key(rows[top]["val_score"], rows[top]["val_loss"]) for _, _, top in fitted]
    best = max(range(len(fitted)), key=lambda k: (keys[k], -len(fitted[k][1])))
    trained, blocks, winner = fitted[best]
    rows[winner]["chosen"] = True
    return trained, blocks, rows


def widen(search: list[LayerFeatures], calibration: list[LayerFeatures], blocks: list[Block], rows: list[dict],
          winner: TrainedFusion, y: np.ndarray, y_sel: np.ndarray, y_cal: np.ndarray, *, labels: list[str],
          training: TrainingConfig, show_progress: bool = False) -> TrainedFusion:
    """The chosen candidate as ``training.ensemble`` networks averaged: the search's ``winner`` and
    seeds seed+1, seed+2, ... fitted on the same rows; calibrated like the single one. Its row in
    ``rows`` becomes the chosen one."""
    chosen = next(r for r in rows if r["chosen"])
    train, val = Signals(stack(search, blocks, 0)[0]), Signals(stack(search, blocks, 1)[0])
    with progress_bar(total=1, desc=f"fit {training.ensemble} networks", unit="ensemble",
                      enabled=show_progress) as bar:
        model, val_loss, epochs = fit_members(winner.model.config, train, y, val, y_sel, training, training.ensemble,
                                              first=(winner.model, chosen["val_loss"], chosen["epochs"]))
        bar.update(1)
    chosen["chosen"] = False
    rows.append({**{k: chosen[k] for k in ("operator", "width", "hidden", "blocks", "n_blocks")},
                 "name": f"{chosen['name']}, {training.ensemble} seeds averaged", "val_loss": round(val_loss, 5),
                 "val_score": round(selection_score(model, val, y_sel), 5), "epochs": epochs,
                 "members": training.ensemble, "chosen": True})
    return calibrate(model, stack(calibration, blocks, 1)[0], y_cal, labels=labels, candidates=[rows[-1]])


def stack(features: list[LayerFeatures], blocks: list[Block], part: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Features of ``blocks`` side by side, in the order the final encoders produce them (encoder, then layer)."""
    ordered = sorted(blocks, key=lambda b: b[0])  # stable: within an encoder, the block order is kept
    arrays = [features[i][layer][part] for i, layer in ordered]
    return np.ascontiguousarray(np.concatenate(arrays, axis=1)), tuple(a.shape[1] for a in arrays)
