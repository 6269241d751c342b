"""`fusionq demo`: train on a labelled sample, classify its held-out part through the queue, report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np

from shared.client import FusionqClient
from shared.errors import DataFileError
from shared.evaluation import confusion_table, evaluate_classifier
from shared.settings import Settings
from shared.textio import LabelledData, read_labelled
from shared.service.training import train_classifier


def sample_dir() -> Path:
    """The labelled sample that ships with fusionq (5 topics, 350 train / 100 test texts)."""
    return Path(str(resources.files("shared") / "demo_data"))


def stratified_sample(data: LabelledData, n: int, *, seed: int = 0) -> LabelledData:
    """At most ``n`` rows with classes in proportion (by first label); all rows if n >= len."""
    if n >= len(data.texts):
        return data
    rng = np.random.default_rng(seed)
    first = np.array([labels[0] for labels in data.labels])
    keep: list[int] = []
    for name in np.unique(first):
        members = np.flatnonzero(first == name)
        share = max(1, int(round(n * len(members) / len(first))))
        keep.extend(rng.choice(members, size=min(share, len(members)), replace=False))
    keep.sort()
    return replace(data, texts=[data.texts[i] for i in keep], labels=[data.labels[i] for i in keep],
                   source=f"{data.source} (stratified sample of {len(keep)}, seed {seed})")


def run_demo(settings: Settings, *, connect: Callable[[Settings], FusionqClient], data_dir: Path | None, name: str, out_dir: Path, max_train: int | None,
             show_progress: bool = True, **options) -> dict:
    """Train (``options`` go to :class:`AutoFusionClassifier`), classify the test file through the
    Celery tasks (through the client ``connect`` makes), evaluate."""
    folder = Path(data_dir) if data_dir else sample_dir()
    for part in ("train.csv", "test.csv"):
        if not (folder / part).is_file():
            raise DataFileError(f"{folder}: no {part}; a demo folder needs train.csv and test.csv (text,label or text,labels)")
    train = read_labelled(folder / "train.csv")
    if max_train:
        train = stratified_sample(train, max_train)
    test = read_labelled(folder / "test.csv")
    options.setdefault("encoders", [settings.default_encoder])
    print(f"training {name!r} on {len(train.texts)} texts from {train.source} ...")
    trained = train_classifier(settings=settings, name=name, data=train, show_progress=show_progress, **options)
    ref = trained.ref
    print(trained.summary())
    mode = "embedded worker, in-memory broker" if settings.embedded else f"workers on {settings.effective_broker_url}"
    print(f"classifying {len(test.texts)} held-out texts through the Celery tasks ({mode}) ...")
    with connect(settings) as client:
        report = evaluate_classifier(client, classifier=ref, data=test, out_dir=out_dir, show_progress=show_progress)
    print(f"\naccuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}   ECE {report['ece']:.4f}   "
          f"({report['n_texts']} texts, {report['texts_per_second']} texts/s)")
    if "confusion" in report:
        print("\n" + confusion_table(report))
    print(f"\nreport: {out_dir / 'report.md'} and {out_dir / 'metrics.json'}")
    return report
