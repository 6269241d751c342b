"""Fine-tuning texts/s: random batches in fp32 (the old loop) against length-grouped batches in fp32
and under bf16 autocast, on the same texts in one run.

    python bench/finetune_speed.py --data ../shared/data/ag_news/train.csv --n 1024

Full fine-tuning of MiniLM-L6 with a linear head (``shared.encoders.finetune``), one epoch over
``--n`` labelled texts per configuration, best of ``--repeats`` (the whole call: load, train,
validate on 32 texts, save); bf16 only where the CPU has it
(AMX or AVX512-BF16) or on CUDA, where training always runs under bf16 autocast (so no fp32 row);
an untimed warm-up call comes first. Prints the CPU model and flags, and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402

from shared.encoders import finetune  # noqa: E402
from shared.encoders.hf import pick_device  # noqa: E402
from shared.encoders.precision import native_bf16_cpu  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.fusion.training import encode_targets  # noqa: E402
from shared.errors import InputError  # noqa: E402
from shared.textio import read_labelled  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def random_batches(lengths, *, batch_size, rng, **_):
    """The loop before length grouping: a plain random order cut into batches."""
    order = rng.permutation(len(lengths)).tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ag_news/train.csv")
    parser.add_argument("--n", type=int, default=1024, help="training texts (one epoch each)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", default=MODEL, help="any local folder or Hub id")
    parser.add_argument("--out", default="bench-results/finetune_speed.json")
    args = parser.parse_args()
    result = {"_machine": machine(), "n": args.n, "model": args.model}
    print(f"CPU: {result['_machine']['cpu']}", flush=True)
    try:
        data = read_labelled(Path(args.data))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts, names = data.texts[:args.n], data.labels[:args.n]
    labels = sorted({n for row in names for n in row})
    y = encode_targets(names, labels, multi_label=False)
    device = pick_device(args.device)
    if device.type == "cuda":  # training always runs under bf16 autocast there: no fp32 row to time
        configs = [("random batches, bf16 autocast", "bf16", True), ("length-grouped, bf16 autocast", "bf16", False)]
    else:
        configs = [("random batches, fp32", "fp32", True), ("length-grouped, fp32", "fp32", False)]
        if native_bf16_cpu():
            configs.append(("length-grouped, bf16 autocast", "bf16", False))

    def tune(precision: str, n: int):  # one epoch over the first n texts (load, train, validate on 32, save)
        with tempfile.TemporaryDirectory() as out:
            return finetune.finetune_backbone(
                EncoderSpec(model=args.model, precision=precision, max_length=args.max_length), texts[:n], y[:n],
                texts[:32], y[:32], n_classes=len(labels), multi_label=False, out_dir=Path(out),
                config=finetune.FinetuneConfig(epochs=1), device=args.device)

    tune(configs[-1][1], 64)  # untimed: the first call pays for CUDA's start and kernel choice
    rows = {}
    for name, precision, old_batches in configs:
        times = []
        for _ in range(args.repeats):
            old_loop = mock.patch.object(finetune, "length_grouped_batches", random_batches)
            with old_loop if old_batches else contextlib.nullcontext():
                fitted = tune(precision, len(texts))
            times.append(fitted.seconds)
        rows[name] = {"texts_per_s": round(args.n / min(times), 1), "seconds": [round(t, 1) for t in times],
                      "train_precision": fitted.train_precision}
        print(f"{name}: {rows[name]['texts_per_s']} texts/s", flush=True)
    base = next(iter(rows.values()))["texts_per_s"]  # the random-batch row
    for row in rows.values():
        row["speedup"] = round(row["texts_per_s"] / base, 2)
    result["configs"] = rows
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
