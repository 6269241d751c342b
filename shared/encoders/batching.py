"""Batch packing for encoders: pure functions, no torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def length_grouped_batches(lengths: Sequence[int], *, batch_size: int, rng, group_batches: int = 50) -> list[list[int]]:
    """Random training batches of ``batch_size`` whose texts have similar lengths.

    The indices are shuffled, cut into groups of ``group_batches`` batches, sorted by length inside
    each group and split into batches; the batches are then shuffled. Padding to a batch's longest
    text then costs about half the tokens of plain random batches (AG News, MR, R8), while every
    epoch still sees a new random order. ``rng``: a ``numpy.random.Generator``.
    """
    if batch_size < 1 or group_batches < 1:
        raise ValueError("batch_size and group_batches must be positive")
    order = rng.permutation(len(lengths))
    span = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        group = sorted(order[start:start + span].tolist(), key=lambda i: lengths[i])
        batches.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(batch_ids: Sequence[Sequence[int]], *, pad_id: int, multiple: int = 1,
              left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, attention mask), both [batch, length] int64, for token id lists of any lengths.

    ``length`` is the longest list rounded up to ``multiple``; pads go on the right, or on the left
    when ``left``. What ``tokenizer.pad`` returns, at about a fortieth of its cost (measured 0.5 against
    20 ms for 256 AG News texts): on a GPU the Python padding took longer than the forward pass.
    """
    if multiple < 1:
        raise ValueError("multiple must be positive")
    longest = max((len(x) for x in batch_ids), default=0)
    length = -(-longest // multiple) * multiple
    ids = np.full((len(batch_ids), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch_ids), length), dtype=np.int64)
    for row, tokens in enumerate(batch_ids):
        n = len(tokens)
        if n:
            span = slice(length - n, length) if left else slice(0, n)
            ids[row, span] = tokens
            mask[row, span] = 1
    return ids, mask
