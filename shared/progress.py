"""One way to show progress: a tqdm bar on stderr, or nothing when disabled."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(*, total: int, desc: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A context-managed progress bar; ``enabled=False`` keeps the same API and prints nothing."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=True)


def wait_with_progress(client, job_id, *, total: int, desc: str, show_progress: bool, timeout: float | None):
    """Wait for a job (``client.wait``) with a progress bar of its finished items; the final progress."""
    with progress_bar(total=total, desc=desc, unit="text", enabled=show_progress) as bar:
        def update(progress) -> None:
            if progress.n_terminal > bar.n:
                bar.update(progress.n_terminal - bar.n)
        return client.wait(job_id, timeout=timeout, on_progress=update)
