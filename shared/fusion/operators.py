"""Fusing several feature blocks (encoders, or layers of one encoder) into one vector (seeds 001/002).

Each block is projected to one width by Linear + ReLU, then combined by an operator:

- ``concat``: the projected blocks side by side (width x blocks);
- ``sum``: their sum;
- ``hadamard``: their element-wise product;
- ``quaternion``: the Hamilton product, each block read as width/4 quaternions, folded left to right;
- ``moe``: a gated mixture of experts, softmax gate over the blocks computed from all of them;
- ``*_residual``: the operator plus the mean of the blocks, so the product terms refine rather than
  replace the plain signal.

``concat`` with width 0 skips the projection: plain concatenation of the standardised features.
"""

from __future__ import annotations

import torch
from torch import nn

BASE_OPERATORS = ("concat", "sum", "hadamard", "quaternion", "moe")
RESIDUAL_OPERATORS = ("hadamard_residual", "quaternion_residual", "moe_residual")
OPERATORS = BASE_OPERATORS + RESIDUAL_OPERATORS


def hamilton_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Quaternion product of ``a`` and ``b`` [..., 4m], each split into (r, i, j, k) parts of width m."""
    ar, ai, aj, ak = a.chunk(4, dim=-1)
    br, bi, bj, bk = b.chunk(4, dim=-1)
    return torch.cat([
        ar * br - ai * bi - aj * bj - ak * bk,
        ar * bi + ai * br + aj * bk - ak * bj,
        ar * bj - ai * bk + aj * br + ak * bi,
        ar * bk + ai * bj - aj * bi + ak * br,
    ], dim=-1)


def check_operator(operator: str, width: int) -> None:
    if operator not in OPERATORS:
        raise ValueError(f"fusion operator {operator!r} is not one of {', '.join(OPERATORS)}")
    if width < 0:
        raise ValueError("projection width must be >= 0")
    if width == 0 and operator != "concat":
        raise ValueError(f"operator {operator!r} needs a projection width > 0 (only concat works on raw blocks)")
    if operator.startswith("quaternion") and width % 4:
        raise ValueError(f"quaternion fusion needs a width divisible by 4, got {width}")


class BlockFusion(nn.Module):
    """[B, sum(block_dims)] -> [B, out_dim]: project each block, then combine them."""

    def __init__(self, block_dims: tuple[int, ...], operator: str = "concat", width: int = 0) -> None:
        super().__init__()
        check_operator(operator, width)
        self.block_dims = tuple(block_dims)
        self.operator = operator
        self.width = width
        n = len(self.block_dims)
        if width:
            self.projections = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.ReLU()) for d in self.block_dims)
        if operator.startswith("moe"):
            self.gate = nn.Linear(width * n, n)
        # Products of several blocks drift in scale; a LayerNorm keeps the head's input steady.
        self.norm = nn.LayerNorm(self.out_dim) if width else nn.Identity()

    @property
    def out_dim(self) -> int:
        if not self.width:
            return sum(self.block_dims)
        return self.width * len(self.block_dims) if self.operator == "concat" else self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.width:
            return x
        blocks = [project(part) for project, part in zip(self.projections, x.split(self.block_dims, dim=-1))]
        base = self.operator.removesuffix("_residual")
        if base == "concat":
            fused = torch.cat(blocks, dim=-1)
        elif base == "sum":
            fused = torch.stack(blocks).sum(0)
        elif base == "hadamard":
            fused = torch.stack(blocks).prod(0)
        elif base == "quaternion":
            fused = blocks[0]
            for block in blocks[1:]:
                fused = hamilton_product(fused, block)
        else:  # moe
            weights = torch.softmax(self.gate(torch.cat(blocks, dim=-1)), dim=-1)  # [B, n]
            fused = torch.einsum("bn,nbd->bd", weights, torch.stack(blocks))
        if self.operator.endswith("_residual"):
            fused = fused + torch.stack(blocks).mean(0)
        return self.norm(fused)
