"""Train a classifier from labelled data and publish it to the registry (the `fusionq train` job)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from shared.db.models import Classifier
from shared.service.autofusion import AutoFusionClassifier
from shared.settings import Settings
from shared.textio import LabelledData


@dataclass(frozen=True)
class TrainingResult:
    classifier: Classifier
    artifact_dir: Path
    validation: dict
    report: dict
    seconds: float


def train_classifier(*, settings: Settings, name: str, data: LabelledData, dev: LabelledData | None = None,
                     show_progress: bool = True, **options) -> TrainingResult:
    """Fit an :class:`AutoFusionClassifier` (``options`` are its arguments), save ``NAME/vN``, register it."""
    started = time.perf_counter()
    classifier = AutoFusionClassifier(settings=settings, show_progress=show_progress, **options).fit(data, dev)
    row = classifier.publish(name)
    return TrainingResult(classifier=row, artifact_dir=Path(row.artifact_uri),
                          validation=classifier.report_["validation"], report=classifier.report_,
                          seconds=time.perf_counter() - started)
