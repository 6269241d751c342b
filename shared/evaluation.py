"""Evaluate a registered classifier on a labelled file through the service; write JSON + Markdown."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from shared.client import FusionqClient
from shared.db.engine import session_for
from shared.db.registry import find_classifier
from shared.errors import FusionqError, ScorerError
from shared.metrics import MULTI_LABEL_ECE_NOTE, evaluate_predictions
from shared.progress import wait_with_progress
from shared.fusion.predict import decide_from_probabilities
from shared.llm.prompts import LabelSet
from shared.llm.sources import choose_llm
from shared.schemas import ItemResult
from shared.scoring import score_texts
from shared.textio import LabelledData, check_known_labels
from shared.vocab import ItemStatus, ScoreMethod


def classify_with_progress(client: FusionqClient, texts: list[str], classifier: str, *, mode: str = "fast",
                           desc: str = "classify", show_progress: bool = True,
                           timeout: float | None = None, **submit_options) -> tuple[uuid.UUID, list[ItemResult]]:
    """Submit, show a progress bar until the job completes; (job id, results in order)."""
    job_id = client.submit(texts, classifier, mode, **submit_options)
    wait_with_progress(client, job_id, total=len(texts), desc=desc, show_progress=show_progress, timeout=timeout)
    return job_id, client.results(job_id)


def evaluate_classifier(client: FusionqClient, *, classifier: str, data: LabelledData, out_dir: Path,
                        show_progress: bool = True) -> dict:
    """Classify ``data`` through the service and report accuracy, F1, ECE and coverage-accuracy.

    Raises FusionqError (after writing a report that says so) when no item was answered."""
    with session_for(client.settings.effective_database_url) as session:
        row = find_classifier(session=session, ref=classifier)
        labels, multi_label, ref = list(row.labels), row.multi_label, f"{row.name}@{row.version}"
    check_known_labels(data, labels)
    started = time.perf_counter()
    _, results = classify_with_progress(client, data.texts, ref, desc=f"evaluate {ref}", show_progress=show_progress)
    done = [r.status == ItemStatus.DONE for r in results]
    predicted = [r.labels if ok else None for r, ok in zip(results, done)]
    confidence = [r.confidence for r in results]
    probabilities = [[r.probabilities.get(n, 0.0) for n in labels] if ok else None for r, ok in zip(results, done)]
    errors = [None if ok else (r.error or "failed") for r, ok in zip(results, done)]
    return write_report(name=ref, data=data, labels=labels, multi_label=multi_label, predicted=predicted,
                        confidence=confidence, probabilities=probabilities, errors=errors,
                        seconds=time.perf_counter() - started, out_dir=out_dir)


def score_predictions(data: LabelledData, labels: list[str], multi_label: bool, predicted: list[list[str] | None],
                      confidence, probabilities=None) -> tuple[dict, np.ndarray]:
    """Metrics of the answered items of ``predicted`` (None = no answer) against ``data``, and, per
    answered item, whether its label set is exactly right. ``probabilities``: per item its
    per-class probabilities in the order of ``labels`` (None where unanswered); multi-label
    needs them for the per-label ECE."""
    ok = [i for i, p in enumerate(predicted) if p is not None]
    index = {label: c for c, label in enumerate(labels)}
    true = np.zeros((len(ok), len(labels)), dtype=bool)
    pred = np.zeros_like(true)
    for row_i, i in enumerate(ok):
        true[row_i, [index[n] for n in data.labels[i]]] = True
        pred[row_i, [index[n] for n in predicted[i]]] = True
    probs = None
    if probabilities is not None:
        probs = np.array([probabilities[i] for i in ok], dtype=np.float64).reshape(len(ok), len(labels))
    metrics = evaluate_predictions(true, pred, np.array([confidence[i] for i in ok], dtype=np.float64), labels,
                                   multi_label=multi_label, probabilities=probs)
    return metrics, (true == pred).all(1)


def write_report(*, name: str, data: LabelledData, labels: list[str], multi_label: bool,
                 predicted: list[list[str] | None], confidence: list[float | None], seconds: float,
                 out_dir: Path, extra: dict | None = None, probabilities=None,
                 errors: list[str | None] | None = None, nothing_scored: type[FusionqError] = FusionqError) -> dict:
    """Metrics of ``predicted`` (None = failed item) against ``data``; writes metrics.json and report.md.

    The metrics cover the scored items only; ``n_scored``, ``n_failed`` and the first error say how
    many those are. When nothing was scored there are no metrics: the files say so and
    ``nothing_scored`` is raised with the count and the first error."""
    n_ok = sum(p is not None for p in predicted)
    n_failed = len(predicted) - n_ok
    first_error = next((e for e, p in zip(errors or [], predicted) if p is None and e), None)
    report = {"classifier": name, "data": data.source, "labels": labels, "multi_label": multi_label,
              "n_texts": len(predicted), "n_scored": n_ok, "n_failed": n_failed, "first_error": first_error,
              "seconds": round(seconds, 2),
              "texts_per_second": round(len(predicted) / seconds, 1) if seconds else None, **(extra or {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not n_ok:
        message = (f"{name}: nothing was scored on {data.source}: all {n_failed} item(s) failed"
                   + (f" (first error: {first_error})" if first_error else "") + "; no metric can be computed")
        report["error"] = message
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        (out_dir / "report.md").write_text(markdown_report(report))
        raise nothing_scored(message)
    metrics, _ = score_predictions(data, labels, multi_label, predicted, confidence, probabilities)
    report.update(metrics)
    if multi_label:
        report["ece_note"] = MULTI_LABEL_ECE_NOTE
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_report(report))
    return report


def evaluate_llm(settings, *, llm: str, data: LabelledData, out_dir: Path, show_progress: bool = True,
                 client: FusionqClient | None = None) -> dict:
    """The LLM alone as a classifier (argmax of its scores, or >= 0.5 per class when multi-label).

    Metrics cover the answers that were scored; the report counts the failed ones. Raises
    ScorerError (after writing a report that says so) when no answer was scored."""
    labels = data.label_names()
    started = time.perf_counter()
    scores = score_texts(settings, llm=llm, labels=LabelSet(tuple(labels)), multi_label=data.multi_label,
                         texts=data.texts, show_progress=show_progress, client=client)
    predicted: list[list[str] | None] = []
    confidence: list[float | None] = []
    probabilities: list[list[float] | None] = []
    for score in scores:
        if score.probabilities is None:
            predicted.append(None)
            confidence.append(None)
            probabilities.append(None)
            continue
        decision = decide_from_probabilities(np.array([score.probabilities]), multi_label=data.multi_label)
        predicted.append([labels[c] for c in np.flatnonzero(decision.label_matrix[0])])
        confidence.append(float(decision.confidence[0]))
        probabilities.append([float(p) for p in decision.probabilities[0]])
    methods = {str(m): sum(s.method == m for s in scores) for m in ScoreMethod}
    extra = {"llm": choose_llm(settings, llm).spec.name, "llm_methods": methods,
             "llm_cost_usd": round(sum(s.spent_usd for s in scores), 6),
             "llm_tokens_in": sum(s.tokens_in for s in scores), "llm_tokens_out": sum(s.tokens_out for s in scores)}
    return write_report(name=f"llm {extra['llm']}", data=data, labels=labels, multi_label=data.multi_label,
                        predicted=predicted, confidence=confidence, probabilities=probabilities,
                        errors=[s.error if s.probabilities is None else None for s in scores],
                        seconds=time.perf_counter() - started, out_dir=out_dir, extra=extra,
                        nothing_scored=ScorerError)


def markdown_report(report: dict) -> str:
    """A human-readable evaluation report (one that says nothing was scored when that is so)."""
    failed = f"{report['n_failed']} failed" + (f"; first error: {report['first_error']}" if report.get("first_error")
                                                else "")
    lines = [f"# Evaluation of `{report['classifier']}`", "",
             f"Data: `{report['data']}` ({report['n_texts']} texts, {failed}), "
             f"{report['seconds']} s through the service.", ""]
    if "accuracy" not in report:
        return "\n".join(lines + ["**Nothing was scored**: every item failed, so there are no metrics.", ""])
    if report["n_failed"]:
        lines += [f"Metrics cover the {report['n_scored']} scored items only.", ""]
    lines += ["| metric | value |", "|---|---|",
              f"| accuracy{' (exact match)' if report['multi_label'] else ''} | {report['accuracy']:.4f} |",
              f"| macro-F1 | {report['macro_f1']:.4f} |"]
    if report["multi_label"]:
        lines += [f"| micro-F1 | {report['micro_f1']:.4f} |",
                  f"| expected calibration error (per label) | {_number(report['ece'])} |",
                  f"| ECE of the item confidence vs exact match | {report['ece_exact_match']:.4f} |"]
    else:
        lines.append(f"| expected calibration error | {report['ece']:.4f} |")
    if report.get("ece_noise_floor") is not None:
        lines.append(f"| ECE a perfectly calibrated model could show on these items (95th percentile) | "
                     f"{report['ece_noise_floor']:.4f} |")
    if report["multi_label"]:
        lines += ["", f"Calibration: {MULTI_LABEL_ECE_NOTE}."]
    lines += ["", "## Coverage-accuracy (most confident share of items)", "",
              "| coverage | items | accuracy | lowest confidence kept |", "|---|---|---|---|"]
    lines += [f"| {r['coverage']:.0%} | {r['n']} | {r['accuracy']:.4f} | {r['min_confidence']:.4f} |"
              for r in report["coverage_accuracy"]]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
              for name, r in report["per_class"].items()]
    if "confusion" in report:
        lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "", confusion_table(report)]
    return "\n".join(lines) + "\n"


def metrics_line(report: dict, multi_label: bool) -> str:
    """The headline metrics, each named: accuracy, macro-F1 (and micro-F1), ECE (per label and exact
    match when multi-label); the same names as report.md and comparison.md."""
    if report.get("n_answered") == 0:
        return "nothing scored (every answer failed)"
    if not multi_label:
        return (f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
                f"ECE {report['ece']:.4f}")
    return (f"accuracy (exact match) {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
            f"micro-F1 {report['micro_f1']:.4f}, ECE per label {_number(report['ece'])}, "
            f"ECE exact match {report['ece_exact_match']:.4f}")


def scored_line(report: dict) -> str:
    """How many items the metrics cover, and why the others are missing."""
    line = f"scored {report['n_scored']} of {report['n_texts']} texts"
    if report["n_failed"]:
        line += f" ({report['n_failed']} failed; first error: {report['first_error']})"
    return line


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def confusion_table(report: dict) -> str:
    labels = report["labels"]
    head = "| true \\ predicted | " + " | ".join(labels) + " |"
    rule = "|---|" + "---|" * len(labels)
    rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(labels, report["confusion"])]
    return "\n".join([head, rule, *rows])
