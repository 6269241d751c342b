"""The files `fusionq classify` and `fusionq score` write: one CSV row per text, in submission order."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def write_predictions_csv(out: Path, results: Sequence, labels: Sequence[str]) -> None:
    """``position, status, labels, confidence, p_<class>..., signals, flags, error`` per result."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "status", "labels", "confidence", *[f"p_{name}" for name in labels],
                         "signals", "flags", "error"])
        for r in results:
            writer.writerow([r.position, r.status, "|".join(r.labels),
                             "" if r.confidence is None else f"{r.confidence:.6f}",
                             *[f"{r.probabilities[name]:.6f}" if r.probabilities else "" for name in labels],
                             "|".join(r.signals), "|".join(r.flags), r.error or ""])


def write_scores_csv(out: Path, scores: Sequence, names: Sequence[str]) -> None:
    """``position, method, p_<class>..., tokens_in, tokens_out, cost_usd, latency_ms, error`` per text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "method", *[f"p_{n}" for n in names], "tokens_in", "tokens_out",
                         "cost_usd", "latency_ms", "error"])
        for i, s in enumerate(scores):
            probs = [f"{p:.6f}" for p in s.probabilities] if s.probabilities is not None else [""] * len(names)
            writer.writerow([i, s.method, *probs, s.tokens_in, s.tokens_out, f"{s.cost_usd:.8f}",
                             f"{s.latency_ms:.1f}", s.error or ""])
