"""Driving the fine-tuning of every backbone of a classifier before its fusion network is fitted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.encoders.finetune import FinetuneConfig, finetune_backbone
from shared.encoders.spec import EncoderSpec
from shared.progress import progress_bar


def finetune_all(specs: list[EncoderSpec], texts: list[str], y: np.ndarray, val_texts: list[str], y_val: np.ndarray,
                 *, n_classes: int, multi_label: bool, config: FinetuneConfig, out_dir: Path, device: str | None,
                 show_progress: bool = False) -> tuple[list[EncoderSpec], list[dict]]:
    """Fine-tune each backbone (best epoch on validation); the tuned specs (same layers) and a report row each."""
    tuned, rows = [], []
    for i, spec in enumerate(specs):
        with progress_bar(total=config.epochs * len(texts), desc=f"fine-tune {Path(spec.model).name}", unit="text",
                          enabled=show_progress) as bar:
            result = finetune_backbone(spec, texts, y, val_texts, y_val, n_classes=n_classes, multi_label=multi_label,
                                       out_dir=Path(out_dir) / str(i), config=config, device=device,
                                       on_step=bar.update)
        tuned.append(replace(result.spec, layers=spec.layers))
        rows.append({"model": spec.model, "method": config.method, "history": result.history,
                     "best_epoch": result.best_epoch, "seconds": round(result.seconds, 2),
                     "train_precision": result.train_precision})
    return tuned, rows
