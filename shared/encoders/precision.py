"""Which number format an encoder runs in: ``auto`` follows the hardware and is never slower than fp32.

bf16 is ~2-3x faster than fp32 where the CPU multiplies bf16 natively (AMX, AVX512-BF16) and often
slower where it does not (pytorch issue 86270), so on a CPU ``auto`` takes bf16 only when the flags
allow it *and* a short measured check agrees. On CUDA it takes bf16 where supported, else fp16.
``int8`` (ONNX Runtime, :mod:`shared.encoders.onnx_int8`) is faster still on a CPU, but lossy and
an optional install, so only a user who asks for it gets it.

A precision asked for by name (a setting, or a classifier that was trained in it and is served in
it) is used as asked, but where this CPU runs it slower than ``auto`` would, the load says so once
with what to do: bf16 without native support ran MiniLM 6-8x slower than fp32 on an AVX2-only EPYC,
and int8 there (7-bit weights, no VNNI) ran no faster than fp32 and lost up to 1.3 points.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from shared.encoders.onnx_int8 import reduced_range, require_onnxruntime
from shared.errors import EncoderError
from shared.vocab import Precision

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much in the check; a tie is not worth the rounding


def torch_dtype(precision: str):  # -> torch.dtype
    import torch

    return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[
        Precision(precision)]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_description() -> str:
    """The CPU model and the flags that decide precision, for benchmark headers and logs."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    relevant = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512_vnni", "avx_vnni")))
    return f"{model} [{' '.join(relevant) or 'no AMX/AVX512-BF16/VNNI'}]"


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16); elsewhere bf16 is emulated."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


@functools.cache
def bf16_speedup_on_cpu(width: int = 384) -> float:
    """fp32 time / bf16 time of a transformer-sized matrix product on this CPU (best of a few runs)."""
    import torch

    def best_time(dtype) -> float:
        x = torch.randn(1024, width, dtype=dtype)
        w = torch.randn(width, 4 * width, dtype=dtype)
        with torch.inference_mode():
            for _ in range(2):
                x @ w
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                x @ w
                runs.append(time.perf_counter() - started)
        return min(runs)

    return best_time(torch.float32) / best_time(torch.bfloat16)


def resolve_precision(requested: str, device) -> Precision:
    """The concrete precision for ``requested`` on ``device`` (a torch.device)."""
    try:
        requested = Precision(requested)
    except ValueError:
        raise EncoderError(f"precision {requested!r} is not one of {', '.join(p.value for p in Precision)}") from None
    if requested == Precision.FP16 and device.type == "cpu":
        raise EncoderError("precision fp16 is for CUDA devices; on a CPU use bf16 (AMX/AVX512-BF16) or fp32")
    if requested == Precision.INT8:
        if device.type != "cpu":
            raise EncoderError(f"precision int8 is a CPU path (ONNX Runtime) and this encoder runs on {device}: "
                               "on CUDA use fp16 or bf16 (or auto)")
        require_onnxruntime()  # refused now, before any training work, rather than at the first encode
    if requested != Precision.AUTO:
        if device.type == "cpu":
            warn_if_slow_on_this_cpu(requested)
        return requested
    if device.type == "cuda":
        import torch

        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    if device.type == "cpu" and native_bf16_cpu():
        return Precision.BF16 if bf16_speedup_on_cpu() >= MIN_SPEEDUP else Precision.FP32
    return Precision.FP32


def warn_if_slow_on_this_cpu(precision: Precision) -> None:
    """Log, once per process and precision, when ``precision`` runs slower on this CPU than ``auto``'s
    choice: bf16 without native support (no flag: known slow, not timed, since the emulated check takes
    seconds) or slower in the measured check; int8 where ONNX Runtime has no VNNI/AMX."""
    if precision == Precision.BF16:
        if not native_bf16_cpu():
            why = "it has no native bf16 (AMX/AVX512-BF16), and emulated bf16 ran the encoder 6-8x slower than fp32 " \
                  "on an AVX2-only EPYC"
        elif (speedup := bf16_speedup_on_cpu()) < 1.0:
            why = f"its bf16 matrix products ran {1 / speedup:.1f}x slower than fp32 in a check just now"
        else:
            return
        _warn_once(f"encoder precision bf16 on this CPU ({cpu_description()}): {why}. The features are "
                              "right, only slow: train with precision auto or fp32 for this hardware, or run these "
                              "workers on a CPU with AMX/AVX512-BF16 or on a GPU")
    elif precision == Precision.INT8 and reduced_range():
        _warn_once(f"encoder precision int8 on this CPU ({cpu_description()}): without VNNI/AMX, ONNX "
                              "Runtime multiplies 7-bit weights with AVX2, and int8 ran no faster than fp32 on an "
                              "AVX2-only EPYC (0.99x) and lost 0.2-1.3 points of test accuracy (AG News, R8): "
                              "precision auto (fp32 here) is the better choice on this hardware")


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)
