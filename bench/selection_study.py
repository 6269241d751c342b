"""How honest the automatic choice is, on every shared dataset, from cached features (issue 13 items 2 and 4).

Runs the same search a default fit runs (``shared.fusion.search.choose``: layer probes, candidate
block sets, operators, heads, temperature scaling) on features encoded once by
``bench/feature_cache.py``, then scores on test what was chosen on validation, beside:

- every single layer's linear probe on test (the best of them is "the best single layer chosen
  after the fact", the bar of item 2);
- the validation figure the fit reports against the test figure;
- the escalation threshold's promise (kept accuracy at the stored threshold, default target:
  escalate 20 %) on validation against test.

Encoding is not re-run, so this takes minutes for the whole table; ``bench/fusion_accuracy.py``
remains the end-to-end measurement (encoding, fit time, memory).

    python bench/selection_study.py --data-dir ../shared/data --cache-dir /tmp/fusionq-features
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402
from bench.feature_cache import cached_features, resolved_spec  # noqa: E402
from bench.fusion_accuracy import DATASETS, balanced_indices, layer_probes_on_test, score  # noqa: E402
from shared.fusion.escalation import EscalationTarget, choose_threshold  # noqa: E402
from shared.fusion.predict import decide  # noqa: E402
from shared.fusion.search import choose, stack  # noqa: E402
from shared.fusion.self_training import self_train  # noqa: E402
from shared.fusion.training import (  # noqa: E402
    Candidate, Signals, TrainingConfig, encode_targets, logits_of, split_train_validation,
)
from shared.metrics import correct_rows  # noqa: E402
from shared.textio import read_labelled  # noqa: E402


def layer_columns(matrix: np.ndarray, layers: list[int], hidden: int, rows: np.ndarray) -> dict[int, np.ndarray]:
    """{layer: its [rows, hidden] slice} of a cached [N, layers x hidden] matrix."""
    return {layer: np.ascontiguousarray(matrix[rows, j * hidden:(j + 1) * hidden]) for j, layer in enumerate(layers)}


def logits_for(model, x: np.ndarray) -> np.ndarray:
    return logits_of(model, Signals(x))


def chosen_row(choice) -> dict:
    return next(c for c in choice.rows if c["chosen"])


def study(name: str, *, data_dir: Path, cache_dir: Path, spec, training: TrainingConfig,
          self_training: bool = False) -> dict:
    train_file, test_file, dev_file, per_class = DATASETS[name]
    train, test = read_labelled(data_dir / train_file), read_labelled(data_dir / test_file)
    train_m, meta = cached_features(cache_dir, spec, train, train_file)
    test_m, _ = cached_features(cache_dir, spec, test, test_file)
    layers, hidden = meta["layers"], meta["hidden"]
    rows = np.arange(len(train.texts))
    if per_class:
        rows = balanced_indices(train, per_class)
    labels = train.label_names()
    multi = train.multi_label
    targets = encode_targets([train.labels[i] for i in rows], labels, multi_label=multi)
    if dev_file:
        dev = read_labelled(data_dir / dev_file)
        dev_m, _ = cached_features(cache_dir, spec, dev, dev_file)
        tr_rows, y = rows, targets
        feats = {l: [a, b] for (l, a), b in zip(layer_columns(train_m, layers, hidden, tr_rows).items(),
                                                 layer_columns(dev_m, layers, hidden, np.arange(len(dev.texts))).values())}
        y_val = encode_targets(dev.labels, labels, multi_label=multi)
    else:
        tr, va = split_train_validation(targets, val_fraction=training.val_fraction, seed=training.seed)
        tr_f = layer_columns(train_m, layers, hidden, rows[tr])
        va_f = layer_columns(train_m, layers, hidden, rows[va])
        feats = {l: [tr_f[l], va_f[l]] for l in layers}
        y, y_val = targets[tr], targets[va]
    test_f = layer_columns(test_m, layers, hidden, np.arange(len(test.texts)))
    # multi-label test rows may carry labels training never saw: scored as absent, as score() does
    y_test = encode_targets([[n for n in row if n in labels] for row in test.labels] if multi else test.labels,
                            labels, multi_label=multi)

    started = time.perf_counter()
    choice = choose([feats], y, y_val, labels=labels, multi_label=multi, auto=True, names=[spec.model],
                    fusion="auto", width=256, training=training)
    seconds = time.perf_counter() - started
    trained = choice.trained
    test_x, _ = stack([{l: [None, None, test_f[l]] for l in layers}], choice.blocks, 2)
    t = trained.temperatures["encoder"]
    logits = logits_for(trained.model, test_x)
    decision = decide(logits / t, multi_label=multi, threshold=trained.label_thresholds or 0.5)
    test_scores = score(decision, test, labels, multi)
    # the escalation promise: the threshold is chosen on the calibration rows the fit kept for it
    cal_x, cal_y = stack([feats], choice.blocks, 1)[0][choice.calibration_rows], y_val[choice.calibration_rows]
    cal_decision = decide(logits_for(trained.model, cal_x) / t, multi_label=multi,
                          threshold=trained.label_thresholds or 0.5)
    cal_correct = correct_rows(cal_decision.label_matrix, cal_y, multi)
    threshold = choose_threshold(EscalationTarget(), cal_decision.confidence, cal_correct)
    test_correct = correct_rows(decision.label_matrix, y_test, multi)
    kept_val, kept_test = cal_decision.confidence >= threshold, decision.confidence >= threshold
    # the model's own estimate of the kept accuracy: the calibrated confidences' mean (single-label only:
    # a multi-label confidence is one per-class decision, not the chance that the whole label set is right)
    expected = None if multi else round(float(cal_decision.confidence[kept_val].mean()), 4)
    promise = {"threshold": round(threshold, 4), "validation_kept_accuracy": round(float(cal_correct[kept_val].mean()), 4),
               "validation_expected_kept_accuracy": expected,
               "test_kept_accuracy": round(float(test_correct[kept_test].mean()), 4),
               "validation_escalated": round(float((~kept_val).mean()), 4),
               "test_escalated": round(float((~kept_test).mean()), 4)}

    if self_training and per_class:  # the rest of the training file, labels dropped
        rest = np.setdiff1d(np.arange(len(train.texts)), rows)
        rest_f = layer_columns(train_m, layers, hidden, rest)
        unlabeled_x, dims = stack([{l: [rest_f[l]] for l in layers}], choice.blocks, 0)
        train_x = stack([feats], choice.blocks, 0)[0]
        val_x = stack([feats], choice.blocks, 1)[0]
        sel, cal = choice.selection_rows, choice.calibration_rows
        started = time.perf_counter()
        refit, st_report = self_train(trained, Candidate(chosen_row(choice)["operator"], chosen_row(choice)["width"],
                                                         chosen_row(choice)["hidden"]),
                                      (train_x, y), (val_x[sel], y_val[sel]), (val_x[cal], y_val[cal]), unlabeled_x,
                                      block_dims=dims, config=training)
        st_logits = logits_for(refit.model, test_x) / refit.temperatures["encoder"]
        st_report["test"] = score(decide(st_logits, multi_label=multi, threshold=refit.label_thresholds or 0.5),
                                  test, labels, multi)
        st_report["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name} self-trained: {st_report}", flush=True)

    probes = layer_probes_on_test(lambda part, layer: (feats[layer][0], feats[layer][1], test_f[layer])[part], layers,
                                  y, y_val, test, labels=labels, multi_label=multi, training=training)
    key = "micro_f1" if multi else "accuracy"
    best_after = max(probes, key=lambda r: r[key])
    chosen = chosen_row(choice)
    row = {"dataset": name, "sizes": {"train": len(y), "validation": len(y_val), "test": len(y_test)},
           "chosen": {"blocks": chosen["blocks"], "candidate": chosen["name"]},
           "reported_validation": {k: trained.validation.get(k) for k in ("n", "accuracy_calibrated", "ece_calibrated",
                                                                           "temperature")},
           "selection_val_score": chosen["val_score"], "test": test_scores,
           "best_single_layer_after_the_fact": best_after, "probes": probes,
           "auto_minus_best_after_points": round(100 * (test_scores[key] - best_after[key]), 2),
           "escalation": promise, "search_seconds": round(seconds, 1)}
    if self_training and per_class:
        row["self_training"] = st_report
    print(f"{name}: chosen {row['chosen']}, test {key} {test_scores[key]} (ECE {test_scores['ece']}), "
          f"best layer after the fact {best_after['layer']}: {best_after[key]}, "
          f"reported validation {row['reported_validation']}, promise {promise}, {seconds:.0f} s", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--cache-dir", default="/tmp/fusionq-features")
    parser.add_argument("--datasets", default="ag_news-4k,r8,r52,mr,reuters10,sst2,ag_news-full")
    parser.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-share", type=float, default=TrainingConfig().calibration_share)
    parser.add_argument("--ensemble", type=int, default=TrainingConfig().ensemble,
                        help="networks averaged in the chosen model (TrainingConfig.ensemble)")
    parser.add_argument("--self-training", action="store_true",
                        help="AG News 4k: also self-train on the other AG News training texts, labels dropped")
    parser.add_argument("--out", default="bench-results/selection_study.json")
    args = parser.parse_args()
    spec = resolved_spec(args.encoder, args.max_length, args.precision)
    training = TrainingConfig(seed=args.seed, calibration_share=args.calibration_share, ensemble=args.ensemble)
    result = {**machine(), "precision": str(spec.precision), "seed": args.seed,
              "training": {"calibration_share": training.calibration_share, "ensemble": training.ensemble},
              "rows": []}
    print(f"CPU: {result['cpu']}; precision {spec.precision}; seed {args.seed}", flush=True)
    unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
    if unknown:
        print(f"error: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    for name in args.datasets.split(","):
        result["rows"].append(study(name, data_dir=Path(args.data_dir), cache_dir=Path(args.cache_dir), spec=spec,
                                    training=training, self_training=args.self_training))
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
