"""Choosing what the fusion network reads: layers per encoder, then the fusion operator and head.

Every choice is made on the validation split. Layers are ranked by a linear probe; the 1, 2 and
3 best per encoder are tried, each with raw concatenation (linear and MLP head) and the
projected operators: a bounded number of fits, never every subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.encoders.hf import get_encoder
from shared.encoders.spec import EncoderSpec
from shared.fusion.layers import probe_layers, rank_layers
from shared.fusion.operators import OPERATORS
from shared.fusion.training import DEFAULT_CANDIDATES, Candidate, TrainedFusion, TrainingConfig, train_fusion
from shared.progress import progress_bar

# (encoder index, layer): one block of features.
Block = tuple[int, int]
# Per encoder: {layer: [train features, validation features]}.
LayerFeatures = dict[int, list[np.ndarray]]


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
        with progress_bar(total=len(part_texts), desc=f"encode {part} ({Path(spec.model).name})", unit="text",
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


def select(features: list[LayerFeatures], sets: list[list[Block]], y: np.ndarray, y_val: np.ndarray, *,
           labels: list[str], multi_label: bool, fusion: str, width: int, training: TrainingConfig,
           show_progress: bool = False) -> tuple[TrainedFusion, list[Block], list[dict]]:
    """Fit every block set x candidate; keep the best on validation (ties: fewer blocks)."""
    rows, best = [], None
    total = sum(len(candidates_for(len(b), fusion=fusion, width=width)) for b in sets)
    with progress_bar(total=total, desc="select fusion", unit="fit", enabled=show_progress) as bar:
        for blocks in sets:
            train_x, dims = stack(features, blocks, 0)
            val_x, _ = stack(features, blocks, 1)
            candidates = candidates_for(len(blocks), fusion=fusion, width=width)
            trained = train_fusion(train_x, y, labels=labels, multi_label=multi_label, block_dims=dims,
                                   candidates=candidates, config=training, validation=(val_x, y_val))
            bar.update(len(candidates))
            name = "+".join(f"L{l}" if len(features) == 1 else f"e{i}L{l}" for i, l in blocks)
            for row in trained.candidates:
                rows.append({**row, "blocks": name, "n_blocks": len(blocks), "chosen": False})
            score = max(r["val_score"] for r in trained.candidates)
            if best is None or score > best[0] + 1e-9:
                best = (score, trained, blocks, len(rows) - len(trained.candidates))
    _, trained, blocks, offset = best
    winner = max(range(offset, offset + len(trained.candidates)),
                 key=lambda j: (rows[j]["val_score"], -rows[j]["val_loss"]))
    rows[winner]["chosen"] = True
    return trained, blocks, rows


def stack(features: list[LayerFeatures], blocks: list[Block], part: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Features of ``blocks`` side by side, in the order the final encoders produce them (encoder, then layer)."""
    ordered = sorted(blocks, key=lambda b: b[0])  # stable: within an encoder, the block order is kept
    arrays = [features[i][layer][part] for i, layer in ordered]
    return np.ascontiguousarray(np.concatenate(arrays, axis=1)), tuple(a.shape[1] for a in arrays)
