"""Every hidden layer's pooled features of a benchmark CSV, encoded once and kept on disk.

The selection and calibration studies (``bench/selection_study.py``) re-fit heads many times on
the same texts; encoding is what costs, so each CSV of the team's data is encoded once per
(encoder, max length, precision) into ``CACHE/<key>/<dataset>/<split>.npy`` ([N, layers x hidden],
float32, rows in file order). Delete the folder to start over.

    python bench/feature_cache.py --data-dir ../shared/data --cache-dir /tmp/fusionq-features
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from shared.encoders.hf import get_encoder, pick_device  # noqa: E402
from shared.encoders.precision import resolve_precision  # noqa: E402
from shared.encoders.spec import EncoderSpec  # noqa: E402
from shared.progress import progress_bar  # noqa: E402
from shared.errors import FusionqError  # noqa: E402
from shared.textio import LabelledData, read_labelled  # noqa: E402

FILES = ("ag_news/train.csv", "ag_news/test.csv", "r8/train.csv", "r8/test.csv", "r52/train.csv", "r52/test.csv",
         "mr/train.csv", "mr/test.csv", "reuters10_modapte/train.csv", "reuters10_modapte/test.csv",
         "sst2/train.csv", "sst2/dev.csv", "sst2/test.csv")


def resolved_spec(model: str, max_length: int, precision: str = "auto") -> EncoderSpec:
    return EncoderSpec(model=model, max_length=max_length, precision=resolve_precision(precision, pick_device(None)))


def cache_folder(cache_dir: Path, spec: EncoderSpec) -> Path:
    key = f"{Path(spec.model).name}-len{spec.max_length}-{spec.precision}"
    return cache_dir / key


def cached_features(cache_dir: Path, spec: EncoderSpec, data: LabelledData, rel: str) -> tuple[np.ndarray, dict]:
    """([N, layers x hidden] features of every row of ``data``, read from ``rel``; the cache entry's
    facts: layers, hidden size), encoded now unless cached."""
    folder = cache_folder(cache_dir, spec)
    target = folder / rel.replace(".csv", ".npy")
    digest = hashlib.sha256("\n".join(data.texts).encode()).hexdigest()[:16]
    meta_file = target.with_suffix(".json")
    if target.exists() and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("texts_sha") == digest:
            return np.load(target, mmap_mode="r"), meta
    encoder = get_encoder(spec)
    reader = encoder.with_layers(encoder.layer_indices())
    started = time.perf_counter()
    with progress_bar(total=len(data.texts), desc=f"encode {rel}", unit="text", enabled=True) as bar:
        features = reader.encode(data.texts, on_batch=bar.update)
    seconds = time.perf_counter() - started
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, np.asarray(features, dtype=np.float32))
    meta = {"texts_sha": digest, "rows": len(data.texts), "seconds": round(seconds, 1),
            "layers": list(encoder.layer_indices()), "hidden": encoder.hidden_size,
            "spec": {"model": spec.model, "max_length": spec.max_length, "precision": str(spec.precision)}, **machine()}
    meta_file.write_text(json.dumps(meta))
    print(f"{rel}: {len(data.texts)} texts in {seconds:.0f} s ({len(data.texts) / seconds:.0f} texts/s)", flush=True)
    return np.load(target, mmap_mode="r"), meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--cache-dir", default="/tmp/fusionq-features")
    parser.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--files", default=",".join(FILES))
    args = parser.parse_args()
    spec = resolved_spec(args.encoder, args.max_length, args.precision)
    print(f"CPU: {machine()['cpu']}; precision {spec.precision}", flush=True)
    for rel in args.files.split(","):
        try:
            data = read_labelled(Path(args.data_dir) / rel)
        except FusionqError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cached_features(Path(args.cache_dir), spec, data, rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
