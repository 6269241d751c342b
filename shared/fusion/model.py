"""FusionModel: encoder features + per-class scores from any number of LLM sources -> logits.

Each LLM source contributes its per-class probabilities and a present/missing flag. A missing
source feeds zeros with flag 0, so one network serves every subset of signals; with no LLM
source configured the network is a calibrated MLP over the encoder features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """Shape of a fusion network; saved beside its weights."""

    feature_dim: int
    n_classes: int
    llm_sources: tuple[str, ...] = ()
    hidden: int = 256
    dropout: float = 0.1
    multi_label: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "llm_sources", tuple(self.llm_sources))
        if self.feature_dim < 1 or self.n_classes < 2 - int(self.multi_label):
            raise ValueError(f"FusionConfig needs feature_dim >= 1 and at least 2 classes (1 if multi-label), got {self}")
        if self.hidden < 0 or not 0 <= self.dropout < 1:
            raise ValueError("FusionConfig.hidden must be >= 0 (0 = linear) and dropout in [0, 1)")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["llm_sources"] = list(self.llm_sources)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        return cls(**data)


class FusionModel(nn.Module):
    """logits = head([standardised features ; LLM scores x mask ; mask])."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        n_sources = len(config.llm_sources)
        # Standardisation is part of the model, so a saved artifact is self-contained.
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        in_dim = config.feature_dim + n_sources * (config.n_classes + 1)
        if config.hidden:
            self.head = nn.Sequential(
                nn.Dropout(config.dropout), nn.Linear(in_dim, config.hidden), nn.GELU(),
                nn.Dropout(config.dropout), nn.Linear(config.hidden, config.n_classes),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(in_dim, config.n_classes))

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
        x = (features - self.feature_mean) / self.feature_std
        n_sources = len(self.config.llm_sources)
        if n_sources:
            batch = features.shape[0]
            if llm_scores is None:
                llm_scores = features.new_zeros(batch, n_sources, self.config.n_classes)
                llm_mask = features.new_zeros(batch, n_sources)
            mask = llm_mask.to(features.dtype)
            scores = llm_scores.to(features.dtype) * mask.unsqueeze(-1)
            x = torch.cat([x, scores.flatten(1), mask], dim=-1)
        return self.head(x)
