"""Batch packing for encoders: pure functions, no torch."""

from __future__ import annotations

from collections.abc import Sequence


def pack_by_tokens(lengths: Sequence[int], *, max_tokens: int, max_batch: int) -> list[list[int]]:
    """Group indices of ``lengths`` into batches sorted by length.

    Each batch's padded size (count x longest length, in tokens) stays within ``max_tokens``
    and holds at most ``max_batch`` indices; a single text longer than the budget gets a
    batch of its own. Returns lists of indices into ``lengths``, shortest texts first.
    """
    if max_tokens < 1 or max_batch < 1:
        raise ValueError("max_tokens and max_batch must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = max(lengths[index], 1)  # sorted ascending: the newcomer is the longest
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
