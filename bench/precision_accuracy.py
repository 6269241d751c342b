"""Test accuracy per encoder precision, same training otherwise, and fp32-trained classifiers served on bf16 features.

    python bench/precision_accuracy.py --data-dir ../shared/data --datasets ag_news,r8 --precisions fp32,bf16,int8

For each data set a classifier is fitted on the same training sample with features of each
precision (last layer, mean pooling, the fusion head chosen on validation as usual), then scored on
the whole test split. ``fp32 -> bf16`` is the fp32 classifier fed bf16 test features:
what serving in another precision than training would cost (fusionq never does it: the artifact
records the precision and serving uses it). AG News follows the seeds' protocol: 1,000 training
texts per class (seed 0), the full 7,600-text test split; other sets take up to ``--max-train``
stratified training rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402
from bench.fusion_accuracy import balanced_sample  # noqa: E402
from shared.demo import stratified_sample  # noqa: E402
from shared.encoders.hf import get_encoder  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.service.autofusion import AutoFusionClassifier  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_labelled  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def accuracy(decision, truth: list[str], labels: list[str]) -> float:
    predicted = [labels[i] for i in decision.probabilities.argmax(1)]
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--datasets", default="ag_news,r8")
    parser.add_argument("--max-train", type=int, default=4000)
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 first; int8 needs the onnx extra")
    parser.add_argument("--out", default="bench/out/precision_accuracy.json")
    args = parser.parse_args()
    settings = Settings()
    result = {**machine(), "model": MODEL, "datasets": {}}
    print(f"CPU: {result['cpu']}", flush=True)
    for name in args.datasets.split(","):
        folder = Path(args.data_dir) / name
        train = read_labelled(folder / "train.csv")
        train = balanced_sample(train, 1000) if name == "ag_news" else stratified_sample(train, args.max_train)
        test = read_labelled(folder / "test.csv")
        truth = [labels[0] for labels in test.labels]
        row: dict = {"train": len(train.texts), "test": len(test.texts)}
        classifiers, test_features = {}, {}
        precisions = args.precisions.split(",")
        for precision in precisions:
            started = time.perf_counter()
            clf = AutoFusionClassifier(encoders=[MODEL], layers=(-1,), precision=precision, settings=settings).fit(train)
            encoder = get_encoder(EncoderSpec(model=MODEL, precision=precision))
            test_features[precision] = encoder.encode(test.texts, max_tokens=settings.embed_max_tokens,
                                                      max_batch=settings.embed_max_batch)
            classifiers[precision] = clf.artifact_
            row[f"{precision} accuracy"] = round(accuracy(clf.artifact_.decide(test_features[precision]), truth,
                                                          clf.artifact_.labels), 4)
            row[f"{precision} seconds"] = round(time.perf_counter() - started, 1)
            print(f"{name} {precision}: test accuracy {row[f'{precision} accuracy']}", flush=True)
        for other in precisions[1:]:  # what serving other features than the classifier was trained on would cost
            crossed = classifiers["fp32"].decide(test_features[other])
            row[f"fp32 -> {other} accuracy"] = round(accuracy(crossed, truth, classifiers["fp32"].labels), 4)
            same = classifiers["fp32"].decide(test_features["fp32"]).probabilities.argmax(1) == crossed.probabilities.argmax(1)
            row[f"fp32 -> {other} same label"] = round(float(same.mean()), 4)
            row[f"{other} - fp32 points"] = round(100 * (row[f"{other} accuracy"] - row["fp32 accuracy"]), 2)
        result["datasets"][name] = row
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
