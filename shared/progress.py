"""One way to show progress: a tqdm bar on stderr, or nothing when disabled."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(*, total: int, desc: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A context-managed progress bar; ``enabled=False`` keeps the same API and prints nothing."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)
