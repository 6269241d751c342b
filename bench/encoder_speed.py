"""Encoder texts/s per precision against sentence-transformers, on the same texts in one run.

    python bench/encoder_speed.py --data ../shared/data/ag_news/test.csv --n 2000

Prints the CPU model and flags, what ``auto`` resolves to here (and the measured bf16 check),
texts/s of sentence-transformers' ``encode`` (fp32, batch 32) and of fusionq's encoder in each
precision this device runs, and the cosine similarity (min and mean) of each precision's pooled
features to fp32. On a CPU with onnxruntime installed (the ``onnx`` extra) that includes int8; its
first run exports and caches the int8 model (``FUSIONQ_ONNX_CACHE``) before timing.
``--precisions fp32,int8`` times only those (a CPU without native bf16 runs it 6-8x slower than fp32,
so its row alone would take most of the run).

On CUDA it also times sentence-transformers in the half precision ``auto`` picks, at its default
batch of 32 and at 256, and with ``--budgets`` fusionq's ``auto`` at other token budgets per forward
pass (``TOKENS`` or ``TOKENS:TEXTS``), to size the device's defaults. ``--model`` takes any local
folder or Hub id.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402

from shared.demo import sample_dir  # noqa: E402
from shared.encoders.hf import HFEncoder, pick_device, resolve_model_path  # noqa: E402
from shared.encoders.precision import bf16_speedup_on_cpu, cpu_description, resolve_precision, torch_dtype  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.errors import EncoderError  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.textio import read_texts  # noqa: E402
from shared.vocab import Precision  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def rate(encode, texts: list[str], repeats: int) -> float:
    encode(texts[:64])  # warm-up
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode(texts)
        runs.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(runs)


def parse_budgets(text: str) -> list[tuple[int, int | None]]:
    """``"8192,65536:1024"`` -> [(8192, None), (65536, 1024)]; argparse turns a ValueError into exit 2."""
    budgets = []
    for part in filter(None, text.split(",")):
        tokens, _, count = part.partition(":")
        budget = (int(tokens), int(count) if count else None)
        if budget[0] < 1 or (budget[1] is not None and budget[1] < 1):
            raise ValueError(part)
        budgets.append(budget)
    return budgets


def parse_precisions(text: str) -> list[str]:
    """``"int8,fp32"`` -> ["fp32", "int8"]: fp32 first, as the others' cosine is taken against it."""
    asked = [p.strip() for p in text.split(",") if p.strip()]
    known = [p.value for p in Precision if p != Precision.AUTO]
    if unknown := [p for p in asked if p not in known]:
        raise argparse.ArgumentTypeError(f"unknown precision {', '.join(unknown)}: choose from {', '.join(known)}")
    return ["fp32"] + [p for p in dict.fromkeys(asked) if p != "fp32"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ag_news/test.csv")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--budgets", type=parse_budgets, default=[],
                        help="comma-separated TOKENS[:TEXTS] budgets to time for auto, e.g. 65536:1024")
    parser.add_argument("--precisions", type=parse_precisions, default=None,
                        help="comma-separated precisions to time (fp32 always included, it is the reference), e.g. "
                             "fp32,int8 where bf16 is emulated and would take many minutes; default: all this device runs")
    parser.add_argument("--out", default="bench/out/encoder_speed.json")
    args = parser.parse_args()
    data = Path(args.data) if Path(args.data).is_file() else sample_dir() / "test.csv"
    texts = read_texts(data)[: args.n]
    settings = Settings()
    device = pick_device(settings.device)
    print(f"CPU: {cpu_description()}; device {device}; {os.cpu_count()} cores", flush=True)
    auto = resolve_precision("auto", device)
    result = {**machine(), "device": str(device), "data": str(data), "texts": len(texts), "auto": str(auto),
              "model": args.model, "texts_per_s": {}, "cosine_to_fp32_min": {}, "cosine_to_fp32_mean": {}}
    if device.type == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name(device)
        result["torch"] = torch.__version__
        print(f"GPU: {result['gpu']}, torch {torch.__version__}", flush=True)
    if device.type == "cpu":
        result["bf16_matmul_speedup"] = round(bf16_speedup_on_cpu(), 2)

    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_model_path(args.model), device=str(device))
        st_rows = [("fp32", 32)]
        if device.type == "cuda":  # its fastest fair setting too: the same half precision, larger batches
            st_rows += [("fp32", 256), (str(auto), 32), (str(auto), 256)]
        for precision, batch in st_rows:
            st.to(torch_dtype(precision))
            name = f"sentence-transformers {precision}" + (f" batch {batch}" if device.type == "cuda" else "")
            result["texts_per_s"][name] = round(rate(lambda t: st.encode(t, batch_size=batch), texts, args.repeats), 1)
            print(f"{name}: {result['texts_per_s'][name]} texts/s", flush=True)
        del st
    except ImportError:
        print("sentence-transformers is not installed: its row is left out", flush=True)

    if args.precisions:
        precisions = args.precisions
        for precision in precisions:  # one this device cannot run is refused now, not after minutes of timing
            try:
                resolve_precision(precision, device)
            except EncoderError as exc:
                parser.error(f"--precisions: {exc}")
    else:
        precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
        if device.type == "cpu":
            if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
                precisions.append("int8")
            else:
                print("onnxruntime is not installed (pip install 'fusionq[onnx]'): the int8 row is left out", flush=True)
    features = {}
    for precision in precisions:
        encoder = HFEncoder(EncoderSpec(model=args.model, precision=precision), device=settings.device)
        result.setdefault("attention", getattr(encoder.model.config, "_attn_implementation", "onnx"))

        def encode(t, encoder=encoder):
            return encoder.encode(t, max_tokens=settings.embed_max_tokens, max_batch=settings.embed_max_batch)

        result["texts_per_s"][f"fusionq {precision}"] = round(rate(encode, texts, args.repeats), 1)
        features[precision] = encode(texts)
        print(f"fusionq {precision}: {result['texts_per_s'][f'fusionq {precision}']} texts/s", flush=True)
    # encode_pre is the tokenizer alone, on the host: the ceiling of any device's texts/s
    result["tokenizer_alone_texts_per_s"] = round(rate(encoder.encode_pre, texts, args.repeats), 1)
    print(f"tokenizer alone: {result['tokenizer_alone_texts_per_s']} texts/s (the host's ceiling)", flush=True)
    if args.budgets:
        encoder = HFEncoder(EncoderSpec(model=args.model, precision="auto"), device=settings.device)
    for tokens, count in args.budgets:
        name = f"fusionq auto, {tokens} tokens" + (f", {count} texts" if count else "")
        result["texts_per_s"][name] = round(rate(lambda t: encoder.encode(
            t, max_tokens=tokens, max_batch=count or 100_000), texts, args.repeats), 1)
        print(f"{name}: {result['texts_per_s'][name]} texts/s", flush=True)
    base = features["fp32"]
    for precision, other in features.items():
        cosine = (base * other).sum(1) / np.linalg.norm(base, axis=1) / np.linalg.norm(other, axis=1)
        result["cosine_to_fp32_min"][precision] = round(float(cosine.min()), 6)
        result["cosine_to_fp32_mean"][precision] = round(float(cosine.mean()), 6)
        print(f"fusionq {precision}: cosine to fp32 min {cosine.min():.4f}, mean {cosine.mean():.4f}", flush=True)
    fp32 = result["texts_per_s"]["fusionq fp32"]
    result["speedup_vs_fp32"] = {k: round(v / fp32, 2) for k, v in result["texts_per_s"].items()}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
