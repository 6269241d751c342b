"""In-process causal-LM scorer (transformers): exact answer log-likelihoods, shared-prefix reuse.

The prompt is split around the text: ``prefix`` (instructions + classes, identical for every
text) is run once and its key/value cache reused for every batch; only ``text + suffix`` is
computed per text. The probability of each class is the renormalised probability of its answer
key as the next token (keys are single tokens; otherwise the full key sequence is scored).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np

from shared.encoders.hf import pick_device, resolve_model_path
from shared.errors import EncoderError, LLMLoadError
from shared.llm.parse import renormalise
from shared.llm.prompts import LabelSet, multi_label_question_messages, single_label_messages
from shared.llm.result import ScoreBatch, TextScore
from shared.vocab import ScoreMethod

SENTINEL = "\u241fTEXT\u241f"


class HFScorer:
    """Scores texts against a label set with a local causal LM (CPU or CUDA)."""

    backend = "hf"

    def __init__(self, model: str, *, device: str | None = None, max_text_tokens: int = 512, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_name = model
        self.device = pick_device(device)
        try:
            path = resolve_model_path(model)
        except EncoderError as exc:  # a missing local folder: same message, the LLM's error class
            raise LLMLoadError(str(exc)) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        except Exception as exc:  # transformers raises many types for a bad model
            raise LLMLoadError(f"cannot load causal LM {model!r} from {path!r}: {exc}") from exc
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_text_tokens = max_text_tokens
        self.batch_size = batch_size
        self._prefix_caches: dict[tuple[int, ...], object] = {}  # prompt prefix -> its key/value cache

    # ---- prompt pieces -------------------------------------------------------------------
    def _render(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\nAnswer: "

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _split(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids before and after the text in the rendered prompt."""
        prefix, _, suffix = self._render(messages).partition(SENTINEL)
        return self._ids(prefix), self._ids(suffix)

    def _answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        return [self._ids(a) for a in answers]

    # ---- scoring -------------------------------------------------------------------------
    def score(self, texts: Sequence[str], labels: LabelSet, *, multi_label: bool = False,
              reuse_prefix: bool = True) -> ScoreBatch:
        """Probabilities for each text over ``labels`` (method ``logprobs``)."""
        if multi_label:
            return self._score_multi(texts, labels, reuse_prefix)
        prefix, suffix = self._split(single_label_messages(labels, SENTINEL))
        rows = [self._ids(t)[: self.max_text_tokens] + suffix for t in texts]
        started = time.perf_counter()
        logprobs = self._answer_logprobs(prefix, rows, list(labels.keys), reuse_prefix)
        per_text_ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        return ScoreBatch(scores=tuple(
            TextScore(probabilities=renormalise(lp), method=ScoreMethod.LOGPROBS, tokens_in=len(prefix) + len(row),
                      tokens_out=1, latency_ms=per_text_ms)
            for lp, row in zip(logprobs, rows)), n_classes=len(labels.names))

    def _score_multi(self, texts, labels: LabelSet, reuse_prefix: bool) -> ScoreBatch:
        """One yes/no question per class: P(yes) / (P(yes) + P(no))."""
        splits = [self._split(multi_label_question_messages(labels, SENTINEL, c)) for c in range(len(labels.names))]
        prefix = splits[0][0]  # identical for every class: the question comes after the text
        rows = [self._ids(t)[: self.max_text_tokens] + splits[c][1] for t in texts for c in range(len(labels.names))]
        started = time.perf_counter()
        logprobs = self._answer_logprobs(prefix, rows, ["yes", "no"], reuse_prefix)
        per_text_ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        n = len(labels.names)
        scores = []
        for i in range(len(texts)):
            pairs = logprobs[i * n:(i + 1) * n]
            scores.append(TextScore(probabilities=tuple(renormalise(p)[0] for p in pairs), method=ScoreMethod.LOGPROBS,
                                    tokens_in=sum(len(prefix) + len(r) for r in rows[i * n:(i + 1) * n]),
                                    tokens_out=n, latency_ms=per_text_ms))
        return ScoreBatch(scores=tuple(scores), n_classes=n)

    def _answer_logprobs(self, prefix: list[int], rows: list[list[int]], answers: list[str],
                         reuse_prefix: bool) -> list[list[float]]:
        """log P(answer | prefix + row) for every row and answer."""
        answer_ids = self._answer_ids(answers)
        first = [ids[0] for ids in answer_ids]
        if any(len(ids) != 1 for ids in answer_ids) or len(set(first)) != len(first):
            return [[self._sequence_logprob(prefix + row, ids) for ids in answer_ids] for row in rows]
        out: list[list[float]] = []
        cache = self._prefix_cache(prefix) if reuse_prefix else None  # computed once per label set
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            last = self._last_logprobs(prefix, batch, cache)
            out.extend(last[:, first].tolist())
        return out

    def _prefix_cache(self, prefix: list[int]):
        """The key/value cache of ``prefix``, kept across calls (a few label sets per process)."""
        import torch

        if not prefix:
            return None
        key = tuple(prefix)
        if key not in self._prefix_caches:
            if len(self._prefix_caches) >= 8:
                self._prefix_caches.pop(next(iter(self._prefix_caches)))
            with torch.inference_mode():
                self._prefix_caches[key] = self.model(input_ids=torch.tensor([prefix], device=self.device),
                                                      use_cache=True).past_key_values
        return self._prefix_caches[key]

    def _last_logprobs(self, prefix: list[int], batch: list[list[int]], prefix_cache) -> np.ndarray:
        """Next-token log-probabilities after each row (rows right-padded; prefix cached or not)."""
        import torch

        pad = self.tokenizer.pad_token_id
        if prefix_cache is None:
            batch = [prefix + row for row in batch]
        width = max(len(r) for r in batch)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=self.device)
        kwargs = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones(len(batch), len(prefix), dtype=mask.dtype, device=self.device), mask], dim=1)
            kwargs["past_key_values"] = cache
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, **kwargs).logits
        last = torch.tensor([len(r) - 1 for r in batch], device=self.device)
        chosen = logits[torch.arange(len(batch), device=self.device), last].float()
        return torch.log_softmax(chosen, dim=-1).cpu().numpy()

    def _sequence_logprob(self, context: list[int], continuation: list[int]) -> float:
        """Exact log P(continuation | context) by one full forward pass (multi-token answers)."""
        import torch

        ids = torch.tensor([context + continuation], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0].float()
        logprobs = torch.log_softmax(logits[len(context) - 1:-1], dim=-1)
        return float(logprobs[torch.arange(len(continuation)), torch.tensor(continuation)].sum())
