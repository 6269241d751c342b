"""Accuracy of layer-aware fusion and fine-tuning on the team's benchmark data (issue 4).

For each data set: the AutoFusionClassifier's automatic choice (layers + fusion operator picked
on validation), every single layer (linear probe), the best single layer, multi-layer fusion of
the three best layers with each operator, and a fine-tuned backbone; fit time and peak memory.
Selections use the validation split only; test numbers are computed once per configuration.

    python bench/fusion_accuracy.py --data-dir ../shared/data --out bench-results/fusion.json

AG News follows the seeds' protocol: a balanced 4,000-text sample (1,000 per class, seed 0),
evaluated on the full 7,600-text test split; ``ag_news-full`` uses all 18,615 training rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from shared.service.autofusion import AutoFusionClassifier  # noqa: E402
from shared.encoders.finetune import FinetuneConfig  # noqa: E402
from shared.encoders.hf import get_encoder  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.fusion.layers import LINEAR_PROBE  # noqa: E402
from shared.fusion.operators import OPERATORS  # noqa: E402
from shared.fusion.predict import decide  # noqa: E402
from shared.fusion.training import (  # noqa: E402
    DEFAULT_CANDIDATES, Candidate, Signals, TrainingConfig, encode_targets, logits_of, split_train_validation,
    train_fusion,
)
from shared.metrics import evaluate_predictions  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import LabelledData, read_labelled  # noqa: E402

DATASETS = {
    "ag_news-4k": ("ag_news/train.csv", "ag_news/test.csv", None, 1000),
    "ag_news-full": ("ag_news/train.csv", "ag_news/test.csv", None, None),
    "r8": ("r8/train.csv", "r8/test.csv", None, None),
    "r52": ("r52/train.csv", "r52/test.csv", None, None),
    "mr": ("mr/train.csv", "mr/test.csv", None, None),
    "sst2": ("sst2/train.csv", "sst2/test.csv", "sst2/dev.csv", None),
    "reuters10": ("reuters10_modapte/train.csv", "reuters10_modapte/test.csv", None, None),
}


def balanced_indices(data: LabelledData, per_class: int, *, seed: int = 0) -> np.ndarray:
    """Row indices of ``per_class`` rows of each class (by first label), drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    first = np.array([labels[0] for labels in data.labels])
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(first == c), size=per_class, replace=False)
                                   for c in np.unique(first)]))


def balanced_sample(data: LabelledData, per_class: int, *, seed: int = 0) -> LabelledData:
    """``per_class`` rows of each class (by first label), drawn with a fixed seed."""
    keep = balanced_indices(data, per_class, seed=seed)
    return replace(data, texts=[data.texts[i] for i in keep], labels=[data.labels[i] for i in keep],
                   source=f"{data.source} ({per_class} per class, seed {seed})")


def subset(data: LabelledData, index: np.ndarray, source: str) -> LabelledData:
    return replace(data, texts=[data.texts[i] for i in index], labels=[data.labels[i] for i in index], source=source)


def metrics_of(probabilities_logits: np.ndarray, temperature: float, thresholds, test: LabelledData,
               labels: list[str], multi_label: bool) -> dict:
    decision = decide(probabilities_logits / temperature, multi_label=multi_label, threshold=thresholds or 0.5)
    return score(decision, test, labels, multi_label)


def score(decision, test: LabelledData, labels: list[str], multi_label: bool) -> dict:
    index = {n: i for i, n in enumerate(labels)}
    true = np.zeros((len(test.texts), len(labels)), dtype=bool)
    for row, names in enumerate(test.labels):
        true[row, [index[n] for n in names if n in index]] = True
    m = evaluate_predictions(true, decision.label_matrix.astype(bool), decision.confidence, labels,
                             multi_label=multi_label, probabilities=decision.probabilities)
    top70 = next(row["accuracy"] for row in m["coverage_accuracy"] if row["coverage"] == 0.7)
    out = {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4), "ece": round(m["ece"], 4),
           "ece_noise_floor": round(m["ece_noise_floor"], 4),
           "accuracy_top70": round(top70, 4)}
    if multi_label:
        out["micro_f1"] = round(m["micro_f1"], 4)
    return out


def peak_memory() -> dict:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    try:
        import torch

        if torch.cuda.is_available():
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    return out


def fit_and_test(name, train, dev, test, *, encoder, settings, finetune=None, training=TrainingConfig(),
                 unlabeled=None, probabilities_to: Path | None = None):
    started = time.perf_counter()
    clf = AutoFusionClassifier(encoders=[encoder], layers="auto", fusion="auto", finetune=finetune,
                               training=training, settings=settings, show_progress=True).fit(train, dev, unlabeled)
    fit_s = time.perf_counter() - started
    batch = clf.predict_batch(test.texts)
    labels, multi = clf.artifact_.labels, clf.artifact_.multi_label
    row = {"run": name, "seed": training.seed, "precision": str(clf.artifact_.encoders[0].precision),
           "fit_seconds": round(fit_s, 1), **peak_memory(), "chosen": clf.report_["chosen"],
           "finetune_config": asdict(finetune) if finetune else None,
           "test": score(batch.decision, test, labels, multi), "validation": clf.report_["validation"],
           "self_training": clf.report_.get("self_training"),
           "report": clf.report_}
    if probabilities_to is not None:  # for bench/ensemble_accuracy.py
        save_probabilities(probabilities_to, clf, batch.decision.probabilities, dev)
    print(f"  {name}: {row['test']} in {fit_s:.0f}s, chosen {row['chosen']}", flush=True)
    return clf, row


def save_probabilities(path: Path, clf: AutoFusionClassifier, test_probabilities: np.ndarray,
                       dev: LabelledData) -> None:
    """One run's calibrated test probabilities, and its validation rows' (probabilities, first label,
    a digest of the texts): runs that share those rows can be calibrated together as an ensemble."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, probabilities=test_probabilities, labels=np.array(clf.artifact_.labels),
             validation_probabilities=clf.predict_batch(dev.texts).decision.probabilities,
             validation_labels=np.array([names[0] for names in dev.labels]),
             validation_digest=np.array(hashlib.sha256("\n".join(dev.texts).encode()).hexdigest()))


def layer_probes_on_test(part_of: Callable[[int, int], np.ndarray], layers: list[int], y_train: np.ndarray,
                         y_val: np.ndarray, test: LabelledData, *, labels: list[str], multi_label: bool,
                         training: TrainingConfig) -> list[dict]:
    """Each single layer's linear probe, fitted on ``part_of(0, layer)`` and stopped early on
    ``part_of(1, layer)``, scored on the test features ``part_of(2, layer)``: the best of these is
    "the best single layer after the fact" that the automatic choice is held against."""
    rows = []
    for layer in layers:
        probe = train_fusion(part_of(0, layer), y_train, labels=labels, multi_label=multi_label,
                             candidates=LINEAR_PROBE, config=training, validation=(part_of(1, layer), y_val))
        logits = logits_of(probe.model, Signals(part_of(2, layer)))
        rows.append({"layer": layer, "val_score": probe.candidates[0]["val_score"],
                     **metrics_of(logits, probe.temperatures["encoder"], probe.label_thresholds, test, labels,
                                  multi_label)})
    return rows


def layer_table(clf: AutoFusionClassifier, train, dev, test, *, settings, training) -> dict:
    """Test scores of each single layer, the best one, and the 3 best layers fused by each operator."""
    labels, multi = clf.artifact_.labels, clf.artifact_.multi_label
    base = clf.artifact_.encoders[0]
    encoder = get_encoder(replace(base, layers=(-1,)), device=settings.device)
    reader = encoder.with_layers(encoder.layer_indices())
    h = encoder.hidden_size
    opts = {"max_tokens": settings.embed_max_tokens, "max_batch": settings.embed_max_batch}
    feats = [reader.encode(d.texts, **opts) for d in (train, dev, test)]
    per_layer = lambda part, layer: feats[part][:, (layer - 1) * h: layer * h]  # noqa: E731
    y_tr = encode_targets(train.labels, labels, multi_label=multi)
    y_va = encode_targets(dev.labels, labels, multi_label=multi)
    val_rows = {r["layer"]: r for r in clf.report_["layers"][0]["rows"]}
    table = {"layers": [], "operators": []}

    def fit_eval(blocks, candidates):
        x = [np.concatenate([per_layer(p, l) for l in blocks], axis=1) for p in range(3)]
        trained = train_fusion(x[0], y_tr, labels=labels, multi_label=multi, block_dims=(h,) * len(blocks),
                               candidates=candidates, config=training, validation=(x[1], y_va))
        with __import__("torch").no_grad():
            logits = trained.model(__import__("torch").from_numpy(x[2])).numpy()
        return trained, metrics_of(logits, trained.temperatures["encoder"], trained.label_thresholds, test, labels, multi)

    table["layers"] = layer_probes_on_test(per_layer, encoder.layer_indices(), y_tr, y_va, test, labels=labels,
                                           multi_label=multi, training=training)
    ranked = sorted(val_rows, key=lambda l: (val_rows[l]["val_score"], -val_rows[l]["val_loss"], l), reverse=True)
    trained, m = fit_eval([ranked[0]], DEFAULT_CANDIDATES)
    table["best_single_layer"] = {"layer": ranked[0], "val_score": max(c["val_score"] for c in trained.candidates), **m}
    top = ranked[:3]
    for op in OPERATORS:
        candidates = DEFAULT_CANDIDATES if op == "concat" else (Candidate(op, 256, 0),)
        trained, m = fit_eval(top, candidates)
        table["operators"].append({"operator": op, "layers": top,
                                   "val_score": max(c["val_score"] for c in trained.candidates), **m})
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--variants", default="frozen,finetuned",
                        help="frozen, finetuned, selftrained and/or selftrained-finetuned (the last two AG News 4k "
                             "only: the other AG News training texts, labels dropped, as --unlabeled; the last "
                             "fine-tunes the backbone again on the pseudo-labels)")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=TrainingConfig().seed,
                        help="training seed (fine-tuning, heads; the split too unless --split-seed)")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="seed of the train/validation split (default: --seed); runs that share it share "
                             "validation rows, on which bench/ensemble_accuracy.py calibrates their average")
    parser.add_argument("--out", default="bench-results/fusion_accuracy.json")
    parser.add_argument("--probabilities-dir", type=Path, default=None,
                        help="also save each run's calibrated test probabilities here, as DATASET_VARIANT_seedN.npz "
                             "(bench/ensemble_accuracy.py averages them)")
    args = parser.parse_args()
    settings = Settings(home=Path(os.environ.get("FUSIONQ_HOME", "/tmp/fusionq-bench")), device=args.device)
    training = TrainingConfig(seed=args.seed)
    encoder = EncoderSpec(model=args.encoder, max_length=args.max_length)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["_machine"] = machine()
    print(f"CPU: {results['_machine']['cpu']}", flush=True)
    data_dir = Path(args.data_dir)
    split_seed = training.seed if args.split_seed is None else args.split_seed
    unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
    if unknown:
        print(f"error: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    for name in args.datasets.split(","):
        train_file, test_file, dev_file, per_class = DATASETS[name]
        train, test = read_labelled(data_dir / train_file), read_labelled(data_dir / test_file)
        if per_class:
            train = balanced_sample(train, per_class)
        if dev_file:
            dev = read_labelled(data_dir / dev_file)
        else:  # the same stratified split AutoFusionClassifier would carve, made here so the tables can reuse it
            labels = train.label_names()
            targets = encode_targets(train.labels, labels, multi_label=train.multi_label)
            tr, va = split_train_validation(targets, val_fraction=training.val_fraction, seed=split_seed)
            train, dev = subset(train, tr, f"{train.source} train part"), subset(train, va, f"{train.source} validation")
        print(f"{name}: {len(train.texts)} train / {len(dev.texts)} validation / {len(test.texts)} test", flush=True)
        entry = results.get(name, {})
        entry["sizes"] = {"train": len(train.texts), "validation": len(dev.texts), "test": len(test.texts),
                          "split_seed": None if dev_file else split_seed}
        ft = FinetuneConfig(method="full", epochs=args.finetune_epochs, learning_rate=args.finetune_lr, seed=args.seed)

        def saved(variant: str, name: str = name) -> Path | None:  # where a run's test probabilities go
            return args.probabilities_dir / f"{name}_{variant}_seed{args.seed}.npz" if args.probabilities_dir else None

        if "frozen" in args.variants.split(","):
            clf, entry["frozen"] = fit_and_test(f"{name} frozen", train, dev, test, encoder=encoder,
                                                settings=settings, training=training,
                                                probabilities_to=saved("frozen"))
            entry["frozen"]["table"] = layer_table(clf, train, dev, test, settings=settings, training=training)
        variants = args.variants.split(",")
        if per_class and ("selftrained" in variants or "selftrained-finetuned" in variants):
            full = read_labelled(data_dir / train_file)
            rest = np.setdiff1d(np.arange(len(full.texts)), balanced_indices(full, per_class))
            unlabeled = [full.texts[i] for i in rest]
            if "selftrained" in variants:
                _, entry["selftrained"] = fit_and_test(f"{name} self-trained", train, dev, test, encoder=encoder,
                                                       settings=settings, training=training, unlabeled=unlabeled,
                                                       probabilities_to=saved("selftrained"))
            if "selftrained-finetuned" in variants:
                _, entry["selftrained_finetuned"] = fit_and_test(
                    f"{name} self-trained, fine-tuned", train, dev, test, encoder=encoder, settings=settings,
                    finetune=ft, training=training, unlabeled=unlabeled,
                    probabilities_to=saved("selftrained-finetuned"))
        if "finetuned" in variants:
            _, entry["finetuned"] = fit_and_test(f"{name} fine-tuned", train, dev, test, encoder=encoder,
                                                 settings=settings, finetune=ft, training=training,
                                                 probabilities_to=saved("finetuned"))
        results[name] = entry
        out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
