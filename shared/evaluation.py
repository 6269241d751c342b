"""Evaluate a registered classifier on a labelled file through the service; write JSON + Markdown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from shared.client import FusionqClient
from shared.db.engine import session_for
from shared.db.registry import find_classifier
from shared.metrics import evaluate_predictions
from shared.progress import progress_bar
from shared.schemas import ItemResult, JobProgress
from shared.textio import LabelledData
from shared.trainer import check_known_labels


def classify_with_progress(client: FusionqClient, texts: list[str], classifier: str, *, mode: str = "fast",
                           desc: str = "classify", show_progress: bool = True,
                           timeout: float | None = None) -> list[ItemResult]:
    """Submit, show a progress bar until the job completes, return results in order."""
    job_id = client.submit(texts, classifier, mode)
    with progress_bar(total=len(texts), desc=desc, unit="text", enabled=show_progress) as bar:
        def update(progress: JobProgress) -> None:
            if progress.n_terminal > bar.n:
                bar.update(progress.n_terminal - bar.n)
        client.wait(job_id, timeout=timeout, on_progress=update)
    return client.results(job_id)


def evaluate_classifier(client: FusionqClient, *, classifier: str, data: LabelledData, out_dir: Path,
                        show_progress: bool = True) -> dict:
    """Classify ``data`` through the service and report accuracy, F1, ECE and coverage-accuracy."""
    with session_for(client.settings.effective_database_url) as session:
        row = find_classifier(session=session, ref=classifier)
        labels, multi_label, ref = list(row.labels), row.multi_label, f"{row.name}@{row.version}"
    check_known_labels(data, labels)
    started = time.perf_counter()
    results = classify_with_progress(client, data.texts, ref, desc=f"evaluate {ref}", show_progress=show_progress)
    seconds = time.perf_counter() - started
    ok = [i for i, r in enumerate(results) if r.status == "done"]
    index = {name: c for c, name in enumerate(labels)}
    true = np.zeros((len(ok), len(labels)), dtype=bool)
    pred = np.zeros_like(true)
    for row_i, i in enumerate(ok):
        true[row_i, [index[n] for n in data.labels[i]]] = True
        pred[row_i, [index[n] for n in results[i].labels]] = True
    confidence = np.array([results[i].confidence for i in ok], dtype=np.float64)
    metrics = evaluate_predictions(true, pred, confidence, labels, multi_label=multi_label)
    report = {"classifier": ref, "data": data.source, "labels": labels, "multi_label": multi_label,
              "n_texts": len(results), "n_failed": len(results) - len(ok), "seconds": round(seconds, 2),
              "texts_per_second": round(len(results) / seconds, 1) if seconds else None, **metrics}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_report(report))
    return report


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
