"""Files people open: the layer report (`fusionq layers`) and the mode comparison (`fusionq evaluate`),
each as JSON + Markdown (+ CSV for the layer table) + PNG plots."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from shared.service.autofusion import AutoFusionClassifier
from shared.fusion.predict import decide_from_probabilities
from shared.evaluation import score_predictions
from shared.metrics import MULTI_LABEL_ECE_NOTE
from shared.textio import LabelledData, check_known_labels
from shared.vocab import Mode


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_layer_report(report: list[dict], out_dir: Path, *, data_source: str) -> list[Path]:
    """``report``: per encoder ``{"encoder", "rows": [{"layer", "val_score", ...}]}`` -> CSV, JSON, MD, PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "layers.csv", out_dir / "layers.json", out_dir / "layers.md", out_dir / "layers.png"]
    with paths[0].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["encoder", "layer", "val_score", "val_loss", "epochs", "ece_calibrated"])
        for entry in report:
            for r in entry["rows"]:
                writer.writerow([entry["encoder"], r["layer"], r["val_score"], r["val_loss"], r["epochs"],
                                 r["ece_calibrated"]])
    paths[1].write_text(json.dumps({"data": data_source, "encoders": report}, indent=2))
    lines = ["# Validation score per hidden layer", "", f"Data: `{data_source}`. A linear probe per layer, "
             "fitted on the training split and scored on the validation split (accuracy; micro-F1 when multi-label).", ""]
    for entry in report:
        best = max(entry["rows"], key=lambda r: r["val_score"])
        lines += [f"## {entry['encoder']}", "", "| layer | validation score | validation loss | ECE (calibrated) |",
                  "|---|---|---|---|"]
        lines += [f"| {r['layer']}{' (best)' if r is best else ''} | {r['val_score']:.4f} | {r['val_loss']:.4f} | "
                  f"{r['ece_calibrated']:.4f} |" for r in entry["rows"]]
        lines.append("")
    paths[2].write_text("\n".join(lines))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for entry in report:
        ax.plot([r["layer"] for r in entry["rows"]], [r["val_score"] for r in entry["rows"]], marker="o",
                label=Path(entry["encoder"]).name)
    _save(plt, fig, ax, paths[3], "hidden layer", "validation score (linear probe)", "Which layer classifies best")
    return paths


def compare_modes(clf: AutoFusionClassifier, data: LabelledData, out_dir: Path, *, name: str,
                  show_progress: bool = True) -> dict:
    """Fast, auto, full and each LLM alone on the same texts: accuracy, F1, ECE, coverage-accuracy,
    LLM calls and cost per 1,000 texts, wall time. Writes comparison.json, comparison.md and PNGs."""
    artifact = clf.artifact_
    check_known_labels(data, artifact.labels)
    started = time.perf_counter()
    features = clf.features(data.texts)
    encode_s = time.perf_counter() - started
    modes: dict[str, dict] = {}  # keyed by plain mode names: they are written to JSON
    confidences: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n = len(data.texts)
    order = [Mode.FAST] + ([Mode.AUTO, Mode.FULL] if artifact.llm_sources else [])
    full_batch = None
    for mode in order:
        batch = clf.predict_batch(data.texts, mode, features=features)
        seconds = encode_s + batch.seconds.get("llm", 0.0)
        modes[str(mode)], correct = _mode_row(batch.labels, batch.decision.confidence, data, artifact, seconds,
                                         escalated=float(batch.escalated.mean()), questions=batch.llm_questions,
                                         calls=batch.llm_calls, cost=batch.llm_cost_usd, spent=batch.llm_spent_usd,
                                         n=n, probabilities=batch.decision.probabilities)
        confidences[str(mode)] = (batch.decision.confidence, correct)
        if mode == Mode.FULL:
            full_batch = batch
    if full_batch is not None:  # each LLM alone, from the answers the full mode gathered
        for s, source in enumerate(artifact.llm_sources):
            present = full_batch.llm_mask[:, s] > 0.5
            labels: list[list[str] | None] = [None] * n
            confidence = np.zeros(n)
            probabilities = np.zeros((n, len(artifact.labels)))
            if present.any():
                decision = decide_from_probabilities(full_batch.llm_scores[present, s],
                                                     multi_label=artifact.multi_label)
                for j, i in enumerate(np.flatnonzero(present)):
                    labels[i] = [artifact.labels[c] for c in np.flatnonzero(decision.label_matrix[j])]
                    confidence[i] = decision.confidence[j]
                    probabilities[i] = decision.probabilities[j]
            key = f"llm:{source}"
            modes[key], correct = _mode_row(labels, confidence, data, artifact, full_batch.seconds.get("llm", 0.0),
                                            escalated=1.0, questions=n, calls=0,
                                            cost=full_batch.llm_cost_by_source[s], spent=0.0, n=n,
                                            probabilities=probabilities)
            confidences[key] = (confidence[present], correct)
    report = {"classifier": name, "data": data.source, "n_texts": n, "labels": artifact.labels,
              "multi_label": artifact.multi_label, "escalation": {k: v for k, v in artifact.escalation.items()
                                                                  if k != "curve"},
              "modes": modes}
    if artifact.multi_label:
        report["ece_note"] = MULTI_LABEL_ECE_NOTE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(report, indent=2))
    (out_dir / "comparison.md").write_text(_comparison_markdown(report))
    _plot_coverage(confidences, out_dir / "coverage.png")
    if artifact.escalation.get("curve"):
        _plot_tradeoff(artifact.escalation["curve"], out_dir / "escalation.png",
                       n_items=artifact.escalation.get("validation_size"))
    return report


def _mode_row(labels, confidence, data: LabelledData, artifact, seconds: float, *, escalated: float,
              questions: int, calls: int, cost: float, spent: float, n: int,
              probabilities=None) -> tuple[dict, np.ndarray]:
    """A mode's metrics and costs, and per answered item whether it is right."""
    m, correct = score_predictions(data, artifact.labels, artifact.multi_label, labels, confidence, probabilities)
    row = {"n_answered": len(correct), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"],
           "ece_noise_floor": m["ece_noise_floor"],
           "coverage_accuracy": m["coverage_accuracy"], "escalated_share": escalated,
           "llm_questions_per_1000": round(questions * 1000 / n, 1) if n else 0.0,
           "llm_calls_per_1000": round(calls * 1000 / n, 1) if n else 0.0,
           "llm_cost_per_1000_usd": round(cost * 1000 / n, 6) if n else 0.0, "llm_spent_usd": round(spent, 6),
           "wall_seconds": round(seconds, 2)}
    if artifact.multi_label:
        row["micro_f1"] = m["micro_f1"]
        row["ece_exact_match"] = m["ece_exact_match"]
    if not len(correct):  # nothing answered (an LLM whose every answer failed): no metric, not zeros
        for key in ("accuracy", "macro_f1", "micro_f1", "ece", "ece_noise_floor", "ece_exact_match"):
            if key in row:
                row[key] = None
        row["coverage_accuracy"] = []
    return row, correct


def _comparison_markdown(report: dict) -> str:
    multi = report["multi_label"]
    scores = (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1")) if multi else (("macro_f1", "macro-F1"),)
    eces = ((("ece", "ECE per label"), ("ece_exact_match", "ECE exact match")) if multi else (("ece", "ECE"),))
    heads = ["accuracy (exact match)" if multi else "accuracy", *(n for _, n in scores), *(n for _, n in eces)]
    lines = [f"# Modes of `{report['classifier']}`", "", f"Data: `{report['data']}`, {report['n_texts']} texts. "
             "Questions: what the mode needs from the LLMs; calls: what was actually sent (the rest came from the "
             "cache); cost: what the questions cost at the recorded prices.", "",
             f"| mode | {' | '.join(heads)} | escalated | LLM questions / 1k | LLM calls / 1k | cost / 1k texts "
             "| wall s |",
             "|---|" + "---|" * (len(heads) + 5)]
    for mode, r in report["modes"].items():
        values = [r["accuracy"], *(r[k] for k, _ in scores), *(r[k] for k, _ in eces)]
        shown = (["nothing scored"] * len(values) if not r["n_answered"]
                 else ["n/a" if v is None else f"{v:.4f}" for v in values])
        lines.append(f"| {mode} | {' | '.join(shown)} | "
                     f"{r['escalated_share']:.1%} | {r['llm_questions_per_1000']:.0f} | "
                     f"{r['llm_calls_per_1000']:.0f} | ${r['llm_cost_per_1000_usd']:.4f} | {r['wall_seconds']:.1f} |")
    floors = [r["ece_noise_floor"] for r in report["modes"].values() if r.get("ece_noise_floor") is not None]
    if floors:
        lines += ["", f"ECE noise floor: a perfectly calibrated model could show an ECE up to {max(floors):.4f} on "
                  "these items (95th percentile of simulated outcomes); only an ECE above it shows miscalibration."]
    if multi:
        lines += ["", f"Calibration: {MULTI_LABEL_ECE_NOTE}."]
    esc = report["escalation"]
    if esc:
        lines += ["", f"Escalation threshold {esc.get('threshold', 0):.4f} (target {esc.get('target')}); on "
                  f"validation it escalated {esc.get('validation_escalated_share', 0):.1%}."]
    n_val = esc.get("validation_size") if esc else None
    curve = ("validation trade-off curve stored with the classifier"
             + (f", {n_val} validation items" if n_val is not None else ""))
    if n_val is not None and n_val < ESCALATION_PLOT_MIN_ITEMS:
        curve += (f": fewer than {ESCALATION_PLOT_MIN_ITEMS}, so no curve is drawn, only a note; train with more "
                  "data or a larger --dev set for one")
    lines += ["", "Plots: `coverage.png` (accuracy of the most confident share, per mode), "
              f"`escalation.png` ({curve})."]
    return "\n".join(lines) + "\n"


def _plot_coverage(confidences: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, (confidence, correct) in confidences.items():
        if not len(confidence):
            continue
        order = np.argsort(-confidence, kind="stable")
        hits = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
        ax.plot(np.arange(1, len(order) + 1) / len(order), hits, label=mode)
    _save(plt, fig, ax, path, "coverage (most confident share of items)", "accuracy", "Coverage-accuracy per mode")


# Below this many validation items the escalation trade-off curve is not drawn: each of its 21 points
# moves by whole items (with 89 items, 1 item is 1.1 points of accuracy and the kept accuracy's standard
# error is ~4 points), so the curve's wiggles are noise. escalation.png then holds a note saying so.
ESCALATION_PLOT_MIN_ITEMS = 200


def _plot_tradeoff(curve: list[dict], path: Path, *, n_items: int | None):
    """The validation trade-off curve of ``n_items`` validation items (None: not recorded), with a band of
    one binomial standard error around the kept accuracy; below ESCALATION_PLOT_MIN_ITEMS, only a note.
    Returns the (closed) figure, for inspection."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    n_text = f"n = {n_items} validation items" if n_items is not None else "validation size not recorded"
    xlabel, ylabel = "share of items escalated to the LLM path", "validation accuracy"
    if n_items is not None and n_items < ESCALATION_PLOT_MIN_ITEMS:
        ax.text(0.5, 0.5, f"Only {n_items} validation items: fewer than {ESCALATION_PLOT_MIN_ITEMS},\n"
                "too few for a trade-off curve (each point would move by whole items).\n"
                "Train with more data or a larger --dev set to see one.",
                ha="center", va="center", transform=ax.transAxes, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"Escalation trade-off: not drawn ({n_text})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return fig
    share = np.array([p["escalated_share"] for p in curve], dtype=np.float64)
    kept = np.array([p["kept_accuracy"] if p["kept_accuracy"] is not None else np.nan for p in curve])
    ax.plot(share, kept, marker=".", label="accuracy of items the fast path keeps")
    if n_items:
        n_kept = np.maximum(np.round((1 - share) * n_items), 1)
        se = np.sqrt(np.clip(kept * (1 - kept), 0, None) / n_kept)
        ax.fill_between(share, kept - se, np.minimum(kept + se, 1.0), alpha=0.2, label="± 1 standard error")
    if any(p["overall_accuracy"] is not None for p in curve):
        ax.plot(share, [p["overall_accuracy"] if p["overall_accuracy"] is not None else np.nan for p in curve],
                marker=".", label="overall accuracy (escalated items fused)")
    _save(plt, fig, ax, path, xlabel, ylabel, f"Escalation trade-off on validation ({n_text})")
    return fig
