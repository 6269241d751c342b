"""FusionModel: encoder feature blocks + per-class scores from any number of LLM sources -> logits.

The encoder features arrive as one vector per text, the concatenation of one or more blocks (an
encoder's chosen layers, several encoders); :class:`~shared.fusion.operators.BlockFusion` fuses
the blocks. Each LLM source then contributes its per-class probabilities and a present/missing
flag. A missing source feeds zeros with flag 0, so one network serves every subset of signals
(trained with modality dropout); with no LLM source it is a calibrated classifier over features.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from shared.fusion.operators import BlockFusion, check_operator

# The temperature key of the signal pattern with no LLM source present (stored in artifacts as "encoder").
ENCODER_ONLY_PATTERN = "encoder"


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """Shape of a fusion network; saved beside its weights.

    ``block_dims``: widths of the feature blocks, in order. ``operator``/``width``: how blocks are
    fused (width 0 = raw concatenation). ``hidden``: the head's hidden size (0 = linear head).
    ``members``: how many such networks (fusion + head, trained from different seeds) average
    their logits; one is a single network.
    """

    block_dims: tuple[int, ...]
    n_classes: int
    llm_sources: tuple[str, ...] = ()
    operator: str = "concat"
    width: int = 0
    hidden: int = 256
    dropout: float = 0.1
    multi_label: bool = False
    members: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "llm_sources", tuple(self.llm_sources))
        object.__setattr__(self, "block_dims", tuple(int(d) for d in self.block_dims))
        if not self.block_dims or min(self.block_dims) < 1:
            raise ValueError(f"FusionConfig needs at least one feature block of width >= 1, got {self.block_dims}")
        if self.n_classes < 2 - int(self.multi_label):
            raise ValueError(f"FusionConfig needs at least 2 classes (1 if multi-label), got {self.n_classes}")
        if self.hidden < 0 or not 0 <= self.dropout < 1:
            raise ValueError("FusionConfig.hidden must be >= 0 (0 = linear) and dropout in [0, 1)")
        if self.members < 1:
            raise ValueError(f"FusionConfig.members must be at least 1, got {self.members}")
        if len(set(self.llm_sources)) != len(self.llm_sources):
            raise ValueError(f"LLM source names must be unique, got {self.llm_sources}")
        check_operator(self.operator, self.width)

    @property
    def feature_dim(self) -> int:
        return sum(self.block_dims)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["llm_sources"] = list(self.llm_sources)
        data["block_dims"] = list(self.block_dims)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        return cls(**data)


class FusionModel(nn.Module):
    """logits = head([fuse(standardised blocks) ; LLM scores x mask ; mask]), averaged over the
    ``config.members`` networks (the first's weights are ``blocks``/``head``, the others' are
    ``extra_members``: one-network artifacts keep their weight names)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        # Standardisation is part of the model, so a saved artifact is self-contained.
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks, self.head = _member(config)
        self.extra_members = nn.ModuleList(nn.ModuleDict(dict(zip(("blocks", "head"), _member(config))))
                                           for _ in range(config.members - 1))

    def set_standardisation(self, features: torch.Tensor) -> None:
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp(min=1e-6))

    def forward(
        self,
        features: torch.Tensor,
        llm_scores: torch.Tensor | None = None,
        llm_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features [B, D]; llm_scores [B, S, C] and llm_mask [B, S] (1 = present) -> logits [B, C]."""
        x = self.input_dropout((features - self.feature_mean) / self.feature_std)
        n_sources = len(self.config.llm_sources)
        llm = None
        if n_sources:
            batch = features.shape[0]
            if llm_scores is None or llm_mask is None:
                llm_scores = features.new_zeros(batch, n_sources, self.config.n_classes)
                llm_mask = features.new_zeros(batch, n_sources)
            mask = llm_mask.to(x.dtype)
            llm = torch.cat([(llm_scores.to(x.dtype) * mask.unsqueeze(-1)).flatten(1), mask], dim=-1)
        logits = []
        for blocks, head in [(self.blocks, self.head)] + [(m["blocks"], m["head"]) for m in self.extra_members]:
            fused = blocks(x)
            logits.append(head(fused if llm is None else torch.cat([fused, llm], dim=-1)))
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)


def _member(config: FusionConfig) -> tuple[nn.Module, nn.Module]:
    """One network's block fusion and head."""
    blocks = BlockFusion(config.block_dims, config.operator, config.width)
    in_dim = blocks.out_dim + len(config.llm_sources) * (config.n_classes + 1)
    if config.hidden:
        head = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                             nn.Linear(config.hidden, config.n_classes))
    else:
        head = nn.Linear(in_dim, config.n_classes)
    return blocks, head


def merge_members(models: list[FusionModel]) -> FusionModel:
    """One model averaging the logits of ``models``: one network each, fitted on the same rows (the
    standardisation is shared), from different seeds."""
    first = models[0]
    if any(m.config.members != 1 for m in models) or any(
            dataclasses.replace(m.config, extra={}) != dataclasses.replace(first.config, extra={}) for m in models):
        raise ValueError("merge_members takes one-network models of the same configuration")
    if any(not (torch.equal(m.feature_mean, first.feature_mean) and torch.equal(m.feature_std, first.feature_std))
           for m in models):
        raise ValueError("merge_members takes models standardised on the same training rows")
    merged = FusionModel(dataclasses.replace(first.config, members=len(models)))
    merged.feature_mean.copy_(first.feature_mean)
    merged.feature_std.copy_(first.feature_std)
    merged.blocks.load_state_dict(first.blocks.state_dict())
    merged.head.load_state_dict(first.head.state_dict())
    for target, model in zip(merged.extra_members, models[1:]):
        target["blocks"].load_state_dict(model.blocks.state_dict())
        target["head"].load_state_dict(model.head.state_dict())
    return merged.eval()


def pattern_key(present: tuple[bool, ...] | np.ndarray, sources: tuple[str, ...]) -> str:
    """Name of a signal pattern: the present LLM sources joined by '+', or 'encoder' when none."""
    names = [s for s, on in zip(sources, present) if on]
    return "+".join(names) if names else ENCODER_ONLY_PATTERN
