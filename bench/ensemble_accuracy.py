"""Test accuracy of an ensemble of fitted classifiers: their calibrated test probabilities averaged.

Each input is an ``.npz`` that ``bench/fusion_accuracy.py --probabilities-dir`` saved for one run
(probabilities of the official test split, in the order of its CSV, and the label names). The
members are whatever runs were named, all of them: nothing is selected on test. Single-label
data sets only (the average of probabilities is argmaxed).

An average of calibrated members is under-confident where they disagree. When every member also
saved the same validation rows (``fusion_accuracy.py --split-seed`` shared), the average is
calibrated again: one temperature on the log of the averaged probabilities, fitted on those rows
(``ensemble_calibrated``); otherwise that entry says why it is missing.

    python bench/ensemble_accuracy.py --test ../shared/data/ag_news/test.csv \\
        --out bench-results/ensemble.json runs/ag_news-4k_finetuned_seed*.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from bench.fusion_accuracy import score  # noqa: E402
from shared.fusion.calibration import fit_temperature  # noqa: E402
from shared.fusion.predict import decide, decide_from_probabilities  # noqa: E402
from shared.textio import read_labelled  # noqa: E402


def load_run(path: Path) -> dict:
    """{"probabilities": [N, C] array, "labels": [C names]} from a saved run; ValueError if it is not one."""
    try:
        with np.load(path) as run:
            out = {"probabilities": np.asarray(run["probabilities"], dtype=np.float64),
                   "labels": [str(x) for x in run["labels"]], "validation": None}
            if "validation_probabilities" in run:  # saved since the ensembles are calibrated
                out["validation"] = {"probabilities": np.asarray(run["validation_probabilities"], dtype=np.float64),
                                     "labels": [str(x) for x in run["validation_labels"]],
                                     "digest": str(run["validation_digest"])}
                if out["validation"]["probabilities"].shape != (len(out["validation"]["labels"]), len(out["labels"])):
                    raise ValueError("its validation probabilities do not match its validation labels")
            return out
    except (KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a run saved by fusion_accuracy.py --probabilities-dir ({exc})") from exc


def log_of_mean(probabilities: list[np.ndarray]) -> np.ndarray:
    """The log of the members' averaged probabilities: the ensemble's logits (for a temperature)."""
    return np.log(np.clip(np.mean(probabilities, axis=0), 1e-12, 1.0))


def calibrate_average(members: list[dict], labels: list[str]) -> tuple[float | None, str]:
    """(temperature for the log of the averaged probabilities, how it was fitted) from the members'
    shared validation rows; (None, why not) when they do not share them."""
    saved = [m["validation"] for m in members]
    if any(v is None for v in saved):
        return None, "a member saved no validation rows (run before fusion_accuracy.py saved them)"
    if len({(v["digest"], tuple(v["labels"])) for v in saved}) > 1:
        return None, "the members' validation rows differ (give fusion_accuracy.py the same --split-seed)"
    index = {name: i for i, name in enumerate(labels)}
    if any(name not in index for name in saved[0]["labels"]):
        return None, "a validation label is not among the test labels"
    targets = torch.tensor([index[name] for name in saved[0]["labels"]])
    logits = torch.from_numpy(log_of_mean([v["probabilities"] for v in saved]))
    return fit_temperature(logits, targets, multi_label=False), f"fitted on {len(targets)} shared validation rows"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help=".npz files saved by fusion_accuracy.py")
    parser.add_argument("--test", type=Path, required=True, help="the test CSV those runs were scored on")
    parser.add_argument("--out", type=Path, default=Path("bench-results/ensemble_accuracy.json"))
    args = parser.parse_args()
    try:
        test = read_labelled(args.test)
        members = [load_run(path) for path in args.runs]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if test.multi_label:
        print("error: ensembles are scored for single-label data sets only", file=sys.stderr)
        return 2
    labels = members[0]["labels"]
    for path, member in zip(args.runs, members):
        if member["labels"] != labels or member["probabilities"].shape != (len(test.texts), len(labels)):
            print(f"error: {path} does not hold {len(test.texts)} x {len(labels)} probabilities over the labels "
                  f"of {args.runs[0]}: is it a run on {args.test}?", file=sys.stderr)
            return 2
    rows = {"_machine": machine(), "test": str(args.test), "members": {}, "ensemble": None}
    for path, member in zip(args.runs, members):
        decision = decide_from_probabilities(member["probabilities"], multi_label=False)
        rows["members"][path.name] = score(decision, test, labels, False)
    logits = log_of_mean([m["probabilities"] for m in members])
    rows["ensemble"] = score(decide(logits, multi_label=False), test, labels, False)
    temperature, how = calibrate_average(members, labels)
    rows["ensemble_calibrated"] = {"temperature": None if temperature is None else round(temperature, 4), "how": how}
    if temperature is not None:
        rows["ensemble_calibrated"].update(score(decide(logits / temperature, multi_label=False), test, labels, False))
    accuracies = [m["accuracy"] for m in rows["members"].values()]
    rows["member_accuracy_mean_sd"] = [round(float(np.mean(accuracies)), 4), round(float(np.std(accuracies, ddof=1)), 4)
                                       if len(accuracies) > 1 else None]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    for name, row in rows["members"].items():
        print(f"{name}: {row}")
    print(f"ensemble of {len(members)}: {rows['ensemble']}\ncalibrated again: {rows['ensemble_calibrated']}\n"
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
