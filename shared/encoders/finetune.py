"""Fine-tuning a backbone with a classification head (seed 000's RoBERTa, seed 003's decoder + head).

``full`` trains every weight of an encoder; ``lora`` trains low-rank adapters (peft) of any model,
typically a decoder LLM read at its last token, optionally over 4-bit weights (QLoRA: needs CUDA
and bitsandbytes). Either way the best epoch on validation is kept, adapters are merged into a
16/32-bit copy of the base, and the result is saved as a plain Hugging Face model directory: the
fine-tuned backbone then serves as an ordinary encoder whose features feed the fusion network.

Trainable weights are always fp32; the arithmetic runs under bf16 autocast on CUDA and on a CPU
whose spec resolves to bf16 (``auto`` on AMX/AVX512-BF16 CPUs where bf16 measured faster: ~1.7x
per step here), in fp32 otherwise. The tuned spec keeps the precision its features are made in, so
an ``int8`` spec fine-tunes in fp32 and its features come from the saved fp32 directory exported
to int8 (ONNX Runtime). Batches group texts of similar length (half the padded tokens of random
batches on the shared data sets).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.encoders.batching import length_grouped_batches, pack_by_tokens
from shared.encoders.hf import load_tokenizer, pad_tokens, pick_device, pool, resolve_model_path
from shared.encoders.onnx_int8 import require_onnxruntime
from shared.encoders.precision import resolve_precision
from shared.encoders.spec import EncoderSpec
from shared.errors import ConfigError, EncoderError
from shared.metrics import score_logits
from shared.vocab import FinetuneMethod, Precision, values

log = logging.getLogger(__name__)
@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    method: str = FinetuneMethod.FULL
    epochs: int = 3
    learning_rate: float | None = None  # default: 5e-5 full, 2e-4 LoRA
    batch_size: int = 32
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    load_in_4bit: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in values(FinetuneMethod):
            raise ValueError(f"fine-tuning method {self.method!r} is not one of {', '.join(values(FinetuneMethod))}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("fine-tuning needs epochs >= 1 and batch_size >= 1")
        if self.load_in_4bit and self.method != FinetuneMethod.LORA:
            raise ValueError("4-bit loading is for LoRA fine-tuning only (full fine-tuning needs trainable weights)")

    @property
    def lr(self) -> float:
        return self.learning_rate or (5e-5 if self.method == FinetuneMethod.FULL else 2e-4)


@dataclass
class FinetuneResult:
    spec: EncoderSpec  # the fine-tuned backbone, a local directory, flagged to be bundled
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    train_precision: str = "fp32"  # the autocast dtype of the training arithmetic (weights stay fp32)


def check_4bit_available(device) -> None:
    """Raise a ConfigError that says what is missing when 4-bit loading cannot work here."""
    if device.type != "cuda":
        raise ConfigError("4-bit loading needs a CUDA GPU and this process has none: drop --load-in-4bit "
                          "(LoRA then trains over 16/32-bit weights) or run on a GPU worker")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError("4-bit loading needs bitsandbytes: pip install 'fusionq[gpu]' "
                          "(or pip install bitsandbytes), or drop --load-in-4bit") from exc


def finetune_backbone(
    spec: EncoderSpec,
    texts: Sequence[str],
    targets: np.ndarray,
    val_texts: Sequence[str],
    val_targets: np.ndarray,
    *,
    n_classes: int,
    multi_label: bool,
    out_dir: Path,
    config: FinetuneConfig = FinetuneConfig(),
    device: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Train ``spec``'s model + a linear head on the pooled last layer; save the best backbone in ``out_dir``.

    Weights train in fp32 (bf16 autocast where :func:`training_autocast_dtype` says); the returned spec
    keeps ``spec.precision`` (module docstring).
    """
    import torch

    started = time.perf_counter()
    torch_device = pick_device(device)
    if config.load_in_4bit:
        check_4bit_available(torch_device)
    if spec.precision == Precision.INT8:
        require_onnxruntime()  # the tuned backbone's features will need it: say so before training, not after
    torch.manual_seed(config.seed)
    path = resolve_model_path(spec.model)
    tokenizer = load_tokenizer(path)
    backbone = _load_backbone(path, config, torch_device)
    hidden = int(backbone.config.hidden_size)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(hidden, n_classes)).to(torch_device)
    max_length = min(spec.max_length, 512)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    val_ids = tokenizer(list(val_texts), truncation=True, max_length=max_length)["input_ids"]

    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(ids) / config.batch_size)
    warmup = max(1, int(steps * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    y = torch.from_numpy(targets)
    rng = np.random.default_rng(config.seed)
    lengths = [len(i) for i in ids]
    train_precision = training_autocast_dtype(spec, torch_device)
    autocast = (torch.autocast(torch_device.type, dtype=torch.bfloat16) if train_precision == Precision.BF16
                else _no_autocast())

    def forward(batch_ids):
        input_ids, mask = (torch.from_numpy(a).to(torch_device) for a in pad_tokens(tokenizer, batch_ids))
        with autocast:
            out = backbone(input_ids=input_ids, attention_mask=mask)
            return head(pool(out.last_hidden_state, mask, spec.pooling).float()).float()

    history, best = [], (-1.0, 0, None)
    for epoch in range(1, config.epochs + 1):
        backbone.train()
        head.train()
        losses = []
        for batch in map(torch.tensor, length_grouped_batches(lengths, batch_size=config.batch_size, rng=rng)):
            logits = forward([ids[i] for i in batch])
            target = y[batch].to(torch_device)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target) if multi_label
                    else torch.nn.functional.cross_entropy(logits, target))
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
            if on_step:
                on_step(len(batch))
        score = _validation_score(forward, backbone, head, val_ids, val_targets, multi_label, config.batch_size)
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5), "val_score": round(score, 5)})
        log.info("fine-tune epoch %d: train loss %.4f, validation score %.4f", epoch, np.mean(losses), score)
        if score > best[0]:
            best = (score, epoch, _trainable_state(backbone))
    _restore_trainable_state(backbone, best[2])
    out_dir = Path(out_dir)
    _save_backbone(backbone, tokenizer, path, config, out_dir)
    tuned = dataclasses.replace(spec, model=str(out_dir), extra={**spec.extra, "bundled": True,
                                                                   "finetuned_from": spec.model,
                                                                   "finetune": dataclasses.asdict(config)})
    return FinetuneResult(spec=tuned, history=history, best_epoch=best[1], seconds=time.perf_counter() - started,
                          train_precision=train_precision.value)


def training_autocast_dtype(spec: EncoderSpec, device) -> Precision:
    """bf16 on CUDA and where ``spec``'s precision resolves to bf16 on this CPU (the hardware does bf16
    natively and measured faster); fp32 otherwise (fp32 and int8 specs, CPUs without bf16)."""
    if device.type == "cuda":
        return Precision.BF16
    precision = Precision(spec.precision)
    if precision == Precision.AUTO:
        precision = resolve_precision(precision, device)
    return Precision.BF16 if precision == Precision.BF16 else Precision.FP32


class _no_autocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _load_backbone(path: str, config: FinetuneConfig, device):
    import torch
    from transformers import AutoModel

    kwargs = {}
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32 if not config.load_in_4bit else torch.bfloat16,
                                          **kwargs)
    except Exception as exc:  # transformers raises many types for a bad model
        raise EncoderError(f"cannot load {path!r} for fine-tuning: {exc}") from exc
    if not config.load_in_4bit:
        model = model.to(device)
    if config.method == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, _lora_config(config))


def _lora_config(config: FinetuneConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear", bias="none")


def _trainable_state(model) -> dict:
    """A CPU copy of what training changed (all weights, or just the adapters)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters() if v.requires_grad}


def _restore_trainable_state(model, state: dict) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device))


def _validation_score(forward, backbone, head, val_ids, val_targets, multi_label: bool, batch_size: int) -> float:
    import torch

    backbone.eval()
    head.eval()
    # length-sorted batches pad less (long-text sets such as R8 spent most of this pass on pads)
    order, outputs = [], []
    with torch.no_grad():
        for batch in pack_by_tokens([len(x) for x in val_ids], max_tokens=sys.maxsize, max_batch=batch_size):
            outputs.append(forward([val_ids[i] for i in batch]).float().cpu().numpy())
            order.extend(batch)
    stacked = np.concatenate(outputs) if outputs else np.zeros((0, 1))
    logits = np.empty_like(stacked)
    logits[order] = stacked
    return score_logits(logits, val_targets, multi_label)


def _save_backbone(model, tokenizer, base_path: str, config: FinetuneConfig, out_dir: Path) -> None:
    """Write a plain model directory; LoRA adapters are merged into a fresh 16/32-bit base first
    (a 4-bit base cannot take merged weights exactly)."""
    import torch
    from transformers import AutoModel

    out_dir.mkdir(parents=True, exist_ok=True)
    if config.method == "full":
        model.save_pretrained(out_dir)
    else:
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        adapters = get_peft_model_state_dict(model)
        base = AutoModel.from_pretrained(base_path, dtype=torch.float32)
        merged = get_peft_model(base, _lora_config(config))
        set_peft_model_state_dict(merged, adapters)
        merged.merge_and_unload().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
