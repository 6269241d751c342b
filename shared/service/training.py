"""Train a classifier from labelled data and publish it to the registry (the `fusionq train` job)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from shared.db.models import Classifier
from shared.service.autofusion import AutoFusionClassifier
from shared.settings import Settings
from shared.textio import LabelledData
from shared.threads import run_on_own_thread


@dataclass(frozen=True)
class TrainingResult:
    classifier: Classifier
    artifact_dir: Path
    validation: dict
    report: dict
    seconds: float

    @property
    def ref(self) -> str:
        return f"{self.classifier.name}@{self.classifier.version}"

    def summary(self) -> str:
        """What a person wants to read after training: what was chosen, how well it validated, what it cost."""
        row, chosen, v = self.classifier, self.report["chosen"], self.validation
        kind = "multi-label" if row.multi_label else "single-label"
        split = self.report.get("n_calibration", v["n"]) < self.report.get("n_validation", v["n"])
        held_out = ", unseen by the search" if split else ""
        lines = [f"trained {self.ref} in {self.seconds:.1f}s: {len(row.labels)} {kind} classes "
                 f"({', '.join(row.labels[:8])}{', ...' if len(row.labels) > 8 else ''})",
                 f"  chosen: layers {chosen['layers']}, {chosen['candidate']}",
                 f"  validation ({v['n']} texts{held_out}): accuracy {v['accuracy_calibrated']:.4f} "
                 f"(± {v.get('accuracy_se', 0.0):.4f}, one standard error), "
                 f"ECE{' per label' if row.multi_label else ''} {v['ece_calibrated']:.4f} calibrated / "
                 f"{v['ece_raw']:.4f} raw"]
        esc = self.report.get("escalation")
        if esc and esc.get("validation_kept_accuracy") is not None:
            lines.append(f"  escalation: confidence under {esc['threshold']:.4f} goes to the LLM path (target "
                         f"{', '.join(f'{k} {t}' for k, t in esc['target'].items() if t is not None)}); on the "
                         f"{'calibration' if split else 'validation'} rows {esc['validation_escalated_share']:.1%} escalated and the "
                         f"{esc['validation_kept_n']} kept were {esc['validation_kept_accuracy']:.4f} accurate "
                         f"(± {esc['validation_kept_accuracy_se']:.4f}, one standard error)")
        llm = self.report["llm"]
        if llm:
            lines.append(f"  LLM {', '.join(f'{k}={m}' for k, m in llm['sources'].items())}: {llm['calls']} new calls "
                         f"for {llm['questions']} questions, {llm['failed']} failed, spent ${llm['spent_usd']:.4f}")
        else:
            lines.append("  LLM: none configured: an encoder-only classifier (fast mode)")
        st = self.report.get("self_training")
        if st:
            lines.append(f"  self-training: {st['pseudo_labelled']} of {st['offered']} unlabelled texts pseudo-labelled "
                         f"(confidence >= {st['confidence_cut']:.3f}); "
                         + ("backbone fine-tuned again on them, " if st.get("backbones") else "")
                         + (f"kept (selection score {st['selection_score_before']:.4f} -> "
                            f"{st['selection_score_after']:.4f})" if st["kept"]
                            else f"not kept: the selection score fell ({st['selection_score_before']:.4f} -> "
                                 f"{st['selection_score_after']:.4f})"))
        lines.append(f"  artifact: {row.artifact_uri}")
        return "\n".join(lines)

    def as_json(self) -> dict:
        """The summary's facts, for scripts (`fusionq train --json`)."""
        row = self.classifier
        return {"classifier": self.ref, "labels": row.labels, "multi_label": row.multi_label,
                "artifact": row.artifact_uri, "chosen": self.report["chosen"],
                "validation": {k: v for k, v in self.validation.items() if k != "patterns"},
                "llm": self.report["llm"] or "none configured: encoder-only classifier (fast mode)",
                "sizes": {k: self.report.get(k) for k in ("n_train", "n_selection", "n_calibration")},
                "escalation": self.report.get("escalation"),
                "self_training": self.report.get("self_training"), "seconds": round(self.seconds, 1)}


def train_classifier(*, settings: Settings, name: str, data: LabelledData, dev: LabelledData | None = None,
                     unlabeled: list[str] | None = None, show_progress: bool = True, **options) -> TrainingResult:
    """Fit an :class:`AutoFusionClassifier` (``options`` are its arguments; ``unlabeled``: texts for
    self-training), save ``NAME/vN``, register it."""
    started = time.perf_counter()
    classifier = AutoFusionClassifier(settings=settings, show_progress=show_progress, **options)
    # fit and publish (which saves and reloads tensors) on threads that end: the caller's thread
    # keeps no OpenMP team to slow an embedded worker's encoders in this process (shared.threads).
    # Ctrl-C stops a fit where it is (as on the caller's thread) but lets a publish finish or undo itself.
    run_on_own_thread(lambda: classifier.fit(data, dev, unlabeled=unlabeled), name="fusionq-fit")
    row = run_on_own_thread(lambda: classifier.publish(name), name="fusionq-publish", finish_when_interrupted=True)
    return TrainingResult(classifier=row, artifact_dir=Path(row.artifact_uri),
                          validation=classifier.report_["validation"], report=classifier.report_,
                          seconds=time.perf_counter() - started)
