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
                                         n=n)
        confidences[str(mode)] = (batch.decision.confidence, correct)
        if mode == Mode.FULL:
            full_batch = batch
    if full_batch is not None:  # each LLM alone, from the answers the full mode gathered
        for s, source in enumerate(artifact.llm_sources):
            present = full_batch.llm_mask[:, s] > 0.5
            labels: list[list[str] | None] = [None] * n
            confidence = np.zeros(n)
            if present.any():
                decision = decide_from_probabilities(full_batch.llm_scores[present, s],
                                                     multi_label=artifact.multi_label)
                for j, i in enumerate(np.flatnonzero(present)):
                    labels[i] = [artifact.labels[c] for c in np.flatnonzero(decision.label_matrix[j])]
                    confidence[i] = decision.confidence[j]
            key = f"llm:{source}"
            modes[key], correct = _mode_row(labels, confidence, data, artifact, full_batch.seconds.get("llm", 0.0),
                                            escalated=1.0, questions=n, calls=0,
                                            cost=full_batch.llm_cost_by_source[s], spent=0.0, n=n)
            confidences[key] = (confidence[present], correct)
    report = {"classifier": name, "data": data.source, "n_texts": n, "labels": artifact.labels,
              "multi_label": artifact.multi_label, "escalation": {k: v for k, v in artifact.escalation.items()
                                                                  if k != "curve"},
              "modes": modes}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(report, indent=2))
    (out_dir / "comparison.md").write_text(_comparison_markdown(report))
    _plot_coverage(confidences, out_dir / "coverage.png")
    if artifact.escalation.get("curve"):
        _plot_tradeoff(artifact.escalation["curve"], out_dir / "escalation.png")
    return report


def _mode_row(labels, confidence, data: LabelledData, artifact, seconds: float, *, escalated: float,
              questions: int, calls: int, cost: float, spent: float, n: int) -> tuple[dict, np.ndarray]:
    """A mode's metrics and costs, and per answered item whether it is right."""
    m, correct = score_predictions(data, artifact.labels, artifact.multi_label, labels, confidence)
    row = {"n_answered": len(correct), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"],
           "coverage_accuracy": m["coverage_accuracy"], "escalated_share": escalated,
           "llm_questions_per_1000": round(questions * 1000 / n, 1) if n else 0.0,
           "llm_calls_per_1000": round(calls * 1000 / n, 1) if n else 0.0,
           "llm_cost_per_1000_usd": round(cost * 1000 / n, 6) if n else 0.0, "llm_spent_usd": round(spent, 6),
           "wall_seconds": round(seconds, 2)}
    if artifact.multi_label:
        row["micro_f1"] = m["micro_f1"]
    return row, correct


def _comparison_markdown(report: dict) -> str:
    f1 = "micro-F1" if report["multi_label"] else "macro-F1"
    lines = [f"# Modes of `{report['classifier']}`", "", f"Data: `{report['data']}`, {report['n_texts']} texts. "
             "Questions: what the mode needs from the LLMs; calls: what was actually sent (the rest came from the "
             "cache); cost: what the questions cost at the recorded prices.", "",
             f"| mode | accuracy | {f1} | ECE | escalated | LLM questions / 1k | LLM calls / 1k | cost / 1k texts | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in report["modes"].items():
        score = r["micro_f1"] if report["multi_label"] else r["macro_f1"]
        lines.append(f"| {mode} | {r['accuracy']:.4f} | {score:.4f} | {r['ece']:.4f} | {r['escalated_share']:.1%} | "
                     f"{r['llm_questions_per_1000']:.0f} | {r['llm_calls_per_1000']:.0f} | "
                     f"${r['llm_cost_per_1000_usd']:.4f} | {r['wall_seconds']:.1f} |")
    esc = report["escalation"]
    if esc:
        lines += ["", f"Escalation threshold {esc.get('threshold', 0):.4f} (target {esc.get('target')}); on "
                  f"validation it escalated {esc.get('validation_escalated_share', 0):.1%}."]
    lines += ["", "Plots: `coverage.png` (accuracy of the most confident share, per mode), `escalation.png` "
              "(validation trade-off curve stored with the classifier)."]
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


def _plot_tradeoff(curve: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    share = [p["escalated_share"] for p in curve]
    ax.plot(share, [p["kept_accuracy"] if p["kept_accuracy"] is not None else np.nan for p in curve],
            marker=".", label="accuracy of items the fast path keeps")
    if any(p["overall_accuracy"] is not None for p in curve):
        ax.plot(share, [p["overall_accuracy"] if p["overall_accuracy"] is not None else np.nan for p in curve],
                marker=".", label="overall accuracy (escalated items fused)")
    _save(plt, fig, ax, path, "share of items escalated to the LLM path", "validation accuracy",
          "Escalation trade-off (validation)")
