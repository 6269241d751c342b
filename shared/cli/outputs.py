"""The files `fusionq classify` and `fusionq score` write: one CSV row per text, in submission order."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Sequence
from pathlib import Path

from shared.errors import InputError


def check_output_file(out: Path, *, option: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if out.is_dir():
        raise InputError(f"{option} {out}: is a directory; give a file name, e.g. {out / 'predictions.csv'}")
    _check_writable_folder(out.parent, option=option, given=out)


def check_output_dir(out_dir: Path, *, option: str = "--out-dir") -> None:
    """Refuse an output folder that is a file or cannot be created, before any work is done."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{option} {out_dir}: is a file, not a folder; give a folder name")
    _check_writable_folder(out_dir, option=option, given=out_dir)


def _check_writable_folder(folder: Path, *, option: str, given: Path) -> None:
    existing = folder
    while not existing.exists():  # the nearest ancestor that exists decides whether we may create the rest
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {given}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {given}: no permission to write in {existing}")


@contextlib.contextmanager
def _csv_writer(out: Path):
    """A CSV writer on ``out.partial``, renamed to ``out`` only when complete: never a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            yield csv.writer(handle)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)


def write_predictions_csv(out: Path, results: Sequence, labels: Sequence[str], *,
                          ids: tuple[str, Sequence[str]] | None = None, texts: Sequence[str] | None = None) -> None:
    """``position, [<id column>], [text], status, labels, confidence, p_<class>..., signals, flags, error``
    per result. ``labels`` are the classifier's classes, so the header never depends on which rows failed;
    ``ids`` is (column name, the caller's id per text)."""
    with _csv_writer(out) as writer:
        writer.writerow(["position", *([ids[0]] if ids else []), *(["text"] if texts is not None else []),
                         "status", "labels", "confidence", *[f"p_{name}" for name in labels],
                         "signals", "flags", "error"])
        for r in results:
            writer.writerow([r.position, *([ids[1][r.position]] if ids else []),
                             *([texts[r.position]] if texts is not None else []),
                             r.status, "|".join(r.labels),
                             "" if r.confidence is None else f"{r.confidence:.6f}",
                             *[f"{r.probabilities[name]:.6f}" if r.probabilities else "" for name in labels],
                             "|".join(r.signals), "|".join(r.flags), r.error or ""])


def write_scores_csv(out: Path, scores: Sequence, names: Sequence[str]) -> None:
    """``position, method, p_<class>..., tokens_in, tokens_out, cost_usd, latency_ms, error`` per text."""
    with _csv_writer(out) as writer:
        writer.writerow(["position", "method", *[f"p_{n}" for n in names], "tokens_in", "tokens_out",
                         "cost_usd", "latency_ms", "error"])
        for i, s in enumerate(scores):
            probs = [f"{p:.6f}" for p in s.probabilities] if s.probabilities is not None else [""] * len(names)
            writer.writerow([i, s.method, *probs, s.tokens_in, s.tokens_out, f"{s.cost_usd:.8f}",
                             f"{s.latency_ms:.1f}", s.error or ""])
