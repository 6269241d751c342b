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
from shared.metrics import evaluate_predictions
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
    """Classify ``data`` through the service and report accuracy, F1, ECE and coverage-accuracy."""
    with session_for(client.settings.effective_database_url) as session:
        row = find_classifier(session=session, ref=classifier)
        labels, multi_label, ref = list(row.labels), row.multi_label, f"{row.name}@{row.version}"
    check_known_labels(data, labels)
    started = time.perf_counter()
    _, results = classify_with_progress(client, data.texts, ref, desc=f"evaluate {ref}", show_progress=show_progress)
    predicted = [r.labels if r.status == ItemStatus.DONE else None for r in results]
    confidence = [r.confidence for r in results]
    return write_report(name=ref, data=data, labels=labels, multi_label=multi_label, predicted=predicted,
                        confidence=confidence, seconds=time.perf_counter() - started, out_dir=out_dir)


def score_predictions(data: LabelledData, labels: list[str], multi_label: bool, predicted: list[list[str] | None],
                      confidence) -> tuple[dict, np.ndarray]:
    """Metrics of the answered items of ``predicted`` (None = no answer) against ``data``, and, per
    answered item, whether its label set is exactly right."""
    ok = [i for i, p in enumerate(predicted) if p is not None]
    index = {label: c for c, label in enumerate(labels)}
    true = np.zeros((len(ok), len(labels)), dtype=bool)
    pred = np.zeros_like(true)
    for row_i, i in enumerate(ok):
        true[row_i, [index[n] for n in data.labels[i]]] = True
        pred[row_i, [index[n] for n in predicted[i]]] = True
    metrics = evaluate_predictions(true, pred, np.array([confidence[i] for i in ok], dtype=np.float64), labels,
                                   multi_label=multi_label)
    return metrics, (true == pred).all(1)


def write_report(*, name: str, data: LabelledData, labels: list[str], multi_label: bool,
                 predicted: list[list[str] | None], confidence: list[float | None], seconds: float,
                 out_dir: Path, extra: dict | None = None) -> dict:
    """Metrics of ``predicted`` (None = failed item) against ``data``; writes metrics.json and report.md."""
    metrics, _ = score_predictions(data, labels, multi_label, predicted, confidence)
    n_ok = sum(p is not None for p in predicted)
    report = {"classifier": name, "data": data.source, "labels": labels, "multi_label": multi_label,
              "n_texts": len(predicted), "n_failed": len(predicted) - n_ok, "seconds": round(seconds, 2),
              "texts_per_second": round(len(predicted) / seconds, 1) if seconds else None, **(extra or {}), **metrics}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_report(report))
    return report


def evaluate_llm(settings, *, llm: str, data: LabelledData, out_dir: Path, show_progress: bool = True,
                 client: FusionqClient | None = None) -> dict:
    """The LLM alone as a classifier (argmax of its scores, or >= 0.5 per class when multi-label)."""
    labels = data.label_names()
    started = time.perf_counter()
    scores = score_texts(settings, llm=llm, labels=LabelSet(tuple(labels)), multi_label=data.multi_label,
                         texts=data.texts, show_progress=show_progress, client=client)
    predicted: list[list[str] | None] = []
    confidence: list[float | None] = []
    for score in scores:
        if score.probabilities is None:
            predicted.append(None)
            confidence.append(None)
            continue
        decision = decide_from_probabilities(np.array([score.probabilities]), multi_label=data.multi_label)
        predicted.append([labels[c] for c in np.flatnonzero(decision.label_matrix[0])])
        confidence.append(float(decision.confidence[0]))
    methods = {str(m): sum(s.method == m for s in scores) for m in ScoreMethod}
    extra = {"llm": choose_llm(settings, llm).spec.name, "llm_methods": methods,
             "llm_cost_usd": round(sum(s.spent_usd for s in scores), 6),
             "llm_tokens_in": sum(s.tokens_in for s in scores), "llm_tokens_out": sum(s.tokens_out for s in scores)}
    return write_report(name=f"llm {extra['llm']}", data=data, labels=labels, multi_label=data.multi_label,
                        predicted=predicted, confidence=confidence, seconds=time.perf_counter() - started,
                        out_dir=out_dir, extra=extra)


def markdown_report(report: dict) -> str:
    """A human-readable evaluation report."""
    lines = [f"# Evaluation of `{report['classifier']}`", "",
             f"Data: `{report['data']}` ({report['n_texts']} texts, {report['n_failed']} failed), "
             f"{report['seconds']} s through the service.", "",
             "| metric | value |", "|---|---|",
             f"| accuracy{' (exact match)' if report['multi_label'] else ''} | {report['accuracy']:.4f} |",
             f"| macro-F1 | {report['macro_f1']:.4f} |"]
    if report["multi_label"]:
        lines.append(f"| micro-F1 | {report['micro_f1']:.4f} |")
    lines += [f"| expected calibration error | {report['ece']:.4f} |", "",
              "## Coverage-accuracy (most confident share of items)", "",
              "| coverage | items | accuracy | lowest confidence kept |", "|---|---|---|---|"]
    lines += [f"| {r['coverage']:.0%} | {r['n']} | {r['accuracy']:.4f} | {r['min_confidence']:.4f} |"
              for r in report["coverage_accuracy"]]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
              for name, r in report["per_class"].items()]
    if "confusion" in report:
        lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "", confusion_table(report)]
    return "\n".join(lines) + "\n"


def confusion_table(report: dict) -> str:
    labels = report["labels"]
    head = "| true \\ predicted | " + " | ".join(labels) + " |"
    rule = "|---|" + "---|" * len(labels)
    rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(labels, report["confusion"])]
    return "\n".join([head, rule, *rows])
