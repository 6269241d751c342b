"""The ``embed`` stage: encoder features for a batch of pending items."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.db.engine import session_for
from shared.db.items import mark_failed, store_features
from shared.db.jobs import count_finished
from shared.encoders.hf import encode_features
from shared.encoders.spec import features_key, specs_from_dict
from shared.errors import ArtifactError, EncoderError
from shared.fusion.artifact import get_artifact
from shared.service.aggregate import finish_fast_items
from shared.service.claims import StageClaim, claim
from shared.settings import Settings
from shared.vocab import Mode

log = logging.getLogger(__name__)


def embed_stage(settings: Settings, *, job_id: str, item_ids: list[int],
                between_batches: Callable[[], None] | None = None) -> list[int]:
    """Encode the pending items among ``item_ids`` that no live worker holds; fast-mode items are
    finished here, the others get their features stored. Returns the ids the aggregator must now fuse.

    The claim's lease is renewed while the batch runs; every write names the claim's token, so a
    worker paused past its lease (its work sent again meanwhile) writes nothing when it wakes.
    Logs where the task's time went (claim, the model, the write), one line per task.
    ``between_batches()`` runs after each encoded batch (a prefork child re-reads its share of the cores)."""
    started = time.perf_counter()
    held = claim(settings, job_id, item_ids)
    if not held.items:
        return []
    clock = StageClock(claimed_s=time.perf_counter() - started)
    with held.heartbeat(settings):
        moved = _embed_claimed(settings, held, clock, between_batches)
    log.info("job %s: %d items claimed in %.1f ms, encoded in %.1f ms (the model), %d written in %.1f ms "
             "(%d failed), %d handed to the aggregator", job_id, len(held.items), clock.claimed_s * 1000,
             clock.model_s * 1000, clock.written, clock.write_s * 1000, clock.failed, len(moved))
    return moved


@dataclass
class StageClock:
    """Where one embed task's time went, for its log line: the claim, the model (tokenize, forward,
    pool: what `encode` costs), the one transaction that writes the outcome."""

    claimed_s: float
    model_s: float = 0.0
    write_s: float = 0.0
    written: int = 0
    failed: int = 0


def _embed_claimed(settings: Settings, held: StageClaim, clock: StageClock,
                   between_batches: Callable[[], None] | None) -> list[int]:
    job, claimed = held.job, held.items
    specs = specs_from_dict(held.classifier.encoder_spec)
    started = time.perf_counter()
    try:
        vectors, errors = _encode_isolating_failures(specs, claimed, settings, between_batches)
    except EncoderError as exc:  # the encoder itself cannot load: retrying the same message cannot help
        vectors, errors = {}, {item.id: str(exc) for item in claimed}
    clock.model_s = time.perf_counter() - started
    fast = [item.id for item in claimed if item.id in vectors and (item.mode or job.mode) == Mode.FAST]
    artifact = _artifact_or_none(held.classifier) if fast else None
    if artifact is None:
        fast = []  # the aggregator reports an unreadable artifact on each item
    moved: list[int] = []
    started = time.perf_counter()
    with session_for(settings.effective_database_url) as session, session.begin():
        if fast:
            clock.written = finish_fast_items(session, job, artifact, np.stack([vectors.pop(i) for i in fast]), fast,
                                              token=held.token)
        if vectors:
            dim = len(next(iter(vectors.values())))
            moved = store_features(session=session, encoder_key=features_key(specs), dim=dim, token=held.token,
                                   vectors={item_id: vector.tobytes() for item_id, vector in vectors.items()})
        if errors:
            failed = mark_failed(session=session, errors=errors, token=held.token)
            clock.failed = sum(failed.values())
            count_finished(session=session, job_id=job.id, failed=clock.failed)
    clock.write_s = time.perf_counter() - started
    return moved


def _artifact_or_none(classifier):
    try:
        return get_artifact(classifier.artifact_uri, classifier.artifact_sha256)
    except ArtifactError:
        return None


def _encode_isolating_failures(specs, claimed, settings: Settings, between_batches: Callable[[], None] | None = None
                               ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Encode all texts in one call; only if that fails, one by one, so a bad text fails alone."""
    texts = [item.text for item in claimed]
    options = {"device": settings.device, "max_tokens": settings.embed_max_tokens, "max_batch": settings.embed_max_batch,
               "on_batch": (lambda _texts: between_batches()) if between_batches else None}
    try:
        features = encode_features(specs, texts, **options)
        return {item.id: features[i] for i, item in enumerate(claimed)}, {}
    except EncoderError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the batch: isolate the culprit below
        log.warning("batch of %d texts failed to encode (%s); retrying one by one", len(texts), exc)
    vectors, errors = {}, {}
    for item in claimed:
        try:
            vectors[item.id] = encode_features(specs, [item.text], **options)[0]
        except Exception as exc:  # noqa: BLE001 - recorded on the item, never raised past it
            errors[item.id] = f"encoder failed on this text: {type(exc).__name__}: {exc}"
    return vectors, errors
