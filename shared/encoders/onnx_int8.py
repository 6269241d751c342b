"""Precision ``int8``: an encoder's forward pass through ONNX Runtime with dynamically quantized weights.

The fp32 Hugging Face model is exported once to ONNX (dynamic batch and length, every hidden state
as one stacked output), its weights quantized per output channel to int8
(``onnxruntime.quantization.quantize_dynamic``), and the result cached on disk, so later processes
open it without exporting again. On a 2-core AVX512-VNNI EPYC this ran MiniLM 2.3-2.6x faster than
torch fp32 (bf16: 1.8x), with pooled features at cosine 0.993-0.997 to fp32 (torch's own dynamic
quantization: 1.7x at cosine 0.88). It is a CPU path and needs the ``onnx`` extra.

onnx, onnxruntime, torch and transformers are imported lazily, as in :mod:`shared.encoders.hf`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

from shared.errors import EncoderError

log = logging.getLogger(__name__)

CACHE_ENV = "FUSIONQ_ONNX_CACHE"
DEFAULT_CACHE = Path("~/.cache/fusionq/onnx")
INSTALL_HINT = "pip install 'fusionq[onnx]'"
OPSET = 17
# Bumped whenever what export_int8 writes changes (wrapper, opset, quantization options): the old
# cache entries then stop matching instead of being loaded as if they were the new format.
EXPORT_FORMAT = 1
# What in a model directory decides the exported graph: its config and its weights (the tokenizer
# runs outside the graph, in HFEncoder.encode_pre).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
HASH_CHUNK = 1 << 24
# CPU flags of an int8 dot product that cannot saturate (VNNI, AMX). Without them ONNX Runtime
# multiplies u8 x s8 with AVX2's vpmaddubsw, whose 16-bit pair sums saturate with full-range
# weights; its documented remedy is 7-bit weights (reduce_range). Measured on an AVX2-only EPYC:
# a layer's int8 features fell to cosine 0.974 of fp32 with 8-bit weights.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def require_onnxruntime() -> None:
    """Raise an EncoderError saying what to install when int8 cannot run here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EncoderError(f"precision int8 runs through ONNX Runtime, which is not installed ({exc}): "
                           f"{INSTALL_HINT}, or choose precision fp32 or bf16") from exc


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def local_model_dir(path: str) -> Path:
    """The directory holding the model's config and weights: ``path`` itself, or the Hub cache's
    snapshot of a model id (transformers has downloaded it when loading the tokenizer or model)."""
    if Path(path).is_dir():
        return Path(path)
    from transformers.utils import cached_file

    return Path(cached_file(path, "config.json")).parent


def reduced_range() -> bool:
    """Quantize weights to 7 bits on this CPU (an x86 CPU that reports flags but no VNNI/AMX)."""
    from shared.encoders.precision import cpu_flags  # here: precision imports this module

    flags = cpu_flags()
    return bool(flags) and "avx2" in flags and not any(flag in flags for flag in VNNI_FLAGS)


def cache_key(model_dir: Path) -> str:
    """sha256 over the bytes of the model's config and weight files, and the versions that shape the export.

    The bytes, not names + sizes + mtimes: a fine-tuned backbone is written to a fresh directory by
    every fit and copied again when its artifact is unpacked (new mtimes, so no reuse), and a
    re-fine-tune into the same place leaves files of the same sizes (a stale model loaded as
    current). Reading the weights once costs about 0.1 s per 100 MB, and the load reads them anyway.
    """
    import onnxruntime
    import torch
    import transformers

    digest = hashlib.sha256(f"format={EXPORT_FORMAT} onnxruntime={onnxruntime.__version__} torch={torch.__version__} "
                            f"transformers={transformers.__version__} reduce_range={reduced_range()}".encode())
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))
    for file in files:
        digest.update(f"\0{file.name}\0".encode())
        with file.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


class Int8Model:
    """Stands in for the transformers model inside HFEncoder: called the same way, and its output's
    ``hidden_states`` index the same way (0 = embeddings, -1 = last layer), as one stacked tensor."""

    def __init__(self, session, config) -> None:
        self.session = session
        self.config = config

    def __call__(self, *, input_ids, attention_mask, output_hidden_states: bool = True):
        import torch

        hidden = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return _Output(hidden_states=torch.from_numpy(hidden))


class _Output:
    def __init__(self, hidden_states) -> None:
        self.hidden_states = hidden_states


def load_int8_model(path: str, *, name: str) -> Int8Model:
    """The int8 model of the HF model at ``path`` (``name``: how the user called it, for messages),
    from the cache, or exported and cached now."""
    from transformers import AutoConfig

    require_onnxruntime()
    config = AutoConfig.from_pretrained(path)
    cached = cache_dir() / f"{cache_key(local_model_dir(path))}.int8.onnx"
    session = open_session(cached) if cached.exists() else None
    if session is None:
        export_int8(path, cached, name=name)
        session = open_session(cached)
    if session is None:
        raise EncoderError(f"encoder {name!r}: the int8 model just written to {cached} cannot be opened by ONNX "
                           "Runtime; use precision fp32 or bf16 for this model")
    return Int8Model(session, config)


def open_session(model_file: Path):
    """An ONNX Runtime session on ``model_file``, or None (the file is removed) when it cannot be read:
    a damaged cache entry is rebuilt, never half-used."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # FUSIONQ_TORCH_THREADS governs both runtimes
    options.inter_op_num_threads = 1  # one graph at a time: parallelism is inside each operator
    try:
        return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidProtobuf/... types
        log.warning("int8 model %s is unreadable (%s): removing it and exporting again", model_file, exc)
        model_file.unlink(missing_ok=True)
        return None


def export_int8(path: str, target: Path, *, name: str) -> None:
    """Export the fp32 model at ``path`` to ONNX, quantize it to int8 and write it to ``target``.

    The quantized model is written under a temporary name beside ``target`` and renamed onto it
    (atomic on one file system), so a crash never leaves a partial file under the name that is loaded.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EncoderError(f"cannot create the int8 model cache {target.parent} ({exc.strerror}): point {CACHE_ENV} at "
                           "a writable folder") from exc
    log.info("exporting encoder %s to int8 ONNX (once; cached as %s)", name, target)
    with tempfile.TemporaryDirectory(prefix="fusionq-onnx-") as work:
        fp32_file = Path(work) / "model.fp32.onnx"
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            export_fp32(path, fp32_file)
            quantize(fp32_file, partial)
            os.replace(partial, target)
        except EncoderError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch.onnx and the quantizer raise anything for unsupported models
            raise EncoderError(f"int8 export of encoder {name!r} failed ({type(exc).__name__}: {exc}); "
                               "use precision fp32 or bf16 for this model") from exc
        finally:
            partial.unlink(missing_ok=True)


def export_fp32(path: str, onnx_file: Path) -> None:
    """Trace the fp32 model into ``onnx_file``: inputs ids + mask, output every hidden state stacked
    [layers + 1, batch, tokens, hidden]. The torch model is freed when this returns."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    model.config.use_cache = False  # decoders: no key/value cache among the outputs
    # Two rows, the second padded, so the trace keeps the attention-mask path that padded batches take.
    input_ids = torch.full((2, 16), 5, dtype=torch.long)
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 10:] = 0
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "hidden_states": {1: "batch", 2: "tokens"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in shape checks
        torch.onnx.export(stacked_hidden_states(model), (input_ids, attention_mask), str(onnx_file), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["hidden_states"],
                          dynamic_axes=axes, opset_version=OPSET)


def quantize(fp32_file: Path, int8_file: Path) -> None:
    """Weights to int8 per output channel (7 bits where :func:`reduced_range`); activations are
    quantized at run time, per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_drop_preprocessing_hint)
    try:
        quantize_dynamic(str(fp32_file), str(int8_file), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduced_range())
    finally:
        root.removeFilter(_drop_preprocessing_hint)


def _drop_preprocessing_hint(record: logging.LogRecord) -> bool:
    """The quantizer logs (on the root logger) a hint pointing at an image-classification example:
    the pre-processing it suggests is not what the speed and cosine above were measured with."""
    return "pre-processing before quantization" not in record.getMessage()


def stacked_hidden_states(model):  # -> torch.nn.Module
    """``model`` as a module of (ids, mask) returning every hidden state, index 0 (embeddings) included."""
    import torch

    class AllHiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return torch.stack(out.hidden_states, 0)

    return AllHiddenStates()
