"""Train a classifier from labelled data and publish it to the registry (the `fusionq train` job)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.db.engine import ensure_schema, session_for
from shared.db.models import Classifier
from shared.db.registry import next_version, publish_classifier
from shared.encoders.hf import get_encoder
from shared.encoders.spec import EncoderSpec
from shared.errors import InputError, UnknownLabelError
from shared.fusion.artifact import ClassifierArtifact, save_artifact
from shared.fusion.training import TrainingConfig, encode_targets, train_fusion
from shared.progress import progress_bar
from shared.settings import Settings
from shared.textio import LabelledData, text_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    classifier: Classifier
    artifact_dir: Path
    validation: dict
    seconds: float


def check_training_data(data: LabelledData, *, max_chars: int) -> None:
    """Refuse data a classifier cannot be trained on, naming the rows."""
    bad = [(i + 1, p) for i, t in enumerate(data.texts) if (p := text_problem(t, max_chars=max_chars))]
    if bad:
        shown = "; ".join(f"data row {row}: {problem}" for row, problem in bad[:5])
        raise InputError(f"{data.source}: {len(bad)} unusable text(s) ({shown}). Remove or fix them.")
    names = data.label_names()
    if len(names) < 2 and not data.multi_label:
        raise InputError(f"{data.source}: only one label ({names[0]!r}); a classifier needs at least two")


def check_known_labels(data: LabelledData, labels: list[str]) -> None:
    """Raise :class:`UnknownLabelError` naming labels of ``data`` outside ``labels`` and where they occur."""
    known = set(labels)
    unknown: dict[str, list[int]] = {}
    for row, names in enumerate(data.labels, start=1):
        for name in names:
            if name not in known:
                unknown.setdefault(name, []).append(row)
    if unknown:
        detail = "; ".join(f"{name!r} (data rows {', '.join(map(str, rows[:5]))}{'...' if len(rows) > 5 else ''})"
                           for name, rows in sorted(unknown.items()))
        raise UnknownLabelError(f"{data.source}: label(s) the classifier does not know: {detail}. Known: {', '.join(labels)}")


def encode_texts(spec: EncoderSpec, texts: list[str], *, settings: Settings, desc: str, show_progress: bool) -> np.ndarray:
    """Features of ``texts`` with a progress bar; the encoder is loaded once per process."""
    encoder = get_encoder(spec, device=settings.device)
    with progress_bar(total=len(texts), desc=desc, unit="text", enabled=show_progress) as bar:
        return encoder.encode(texts, max_tokens=settings.embed_max_tokens, max_batch=settings.embed_max_batch,
                              on_batch=bar.update)


def train_classifier(
    *,
    settings: Settings,
    name: str,
    data: LabelledData,
    encoder: EncoderSpec,
    dev: LabelledData | None = None,
    config: TrainingConfig = TrainingConfig(),
    show_progress: bool = True,
) -> TrainingResult:
    """Encode, fit, calibrate, save ``NAME/vN`` under the artifact dir and register it."""
    started = time.perf_counter()
    check_training_data(data, max_chars=settings.max_text_chars)
    labels = data.label_names()
    if dev is not None:
        if dev.multi_label != data.multi_label:
            raise InputError(f"{dev.source} is {'multi' if dev.multi_label else 'single'}-label but {data.source} is not")
        check_training_data(dev, max_chars=settings.max_text_chars)
        check_known_labels(dev, labels)
    url = settings.effective_database_url
    ensure_schema(url)

    features = encode_texts(encoder, data.texts, settings=settings, desc="encode train", show_progress=show_progress)
    targets = encode_targets(data.labels, labels, multi_label=data.multi_label)
    validation = None
    if dev is not None:
        dev_features = encode_texts(encoder, dev.texts, settings=settings, desc="encode dev", show_progress=show_progress)
        validation = (dev_features, encode_targets(dev.labels, labels, multi_label=data.multi_label))
    trained = train_fusion(features, targets, labels=labels, multi_label=data.multi_label, config=config,
                           validation=validation)
    metrics = {"validation": trained.validation, "candidates": trained.candidates, "n_train": len(data.texts),
               "validation_source": dev.source if dev else f"{config.val_fraction:.0%} split of {data.source}"}
    artifact = ClassifierArtifact(model=trained.model, temperature=trained.temperature, labels=labels,
                                  multi_label=data.multi_label, encoder=encoder, metrics=metrics)
    with session_for(url) as session, session.begin():
        version = next_version(session=session, name=name)
        directory = settings.effective_artifact_dir / name / f"v{version}"
        sha = save_artifact(directory, artifact)
        row = publish_classifier(session=session, row=Classifier(
            name=name, version=version, labels=labels, multi_label=data.multi_label,
            encoder_spec=encoder.to_dict(), artifact_uri=str(directory), artifact_sha256=sha, metrics=metrics))
    log.info("published classifier %s@%d (%s)", name, version, directory)
    return TrainingResult(classifier=row, artifact_dir=directory, validation=trained.validation,
                          seconds=time.perf_counter() - started)
