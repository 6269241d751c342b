"""The two stages of the fast path, as plain functions the Celery tasks call.

Each stage reads ids from Postgres, does its work in bulk, and writes idempotently: running a
stage twice on the same ids changes nothing the second time.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import numpy as np
import sqlalchemy as sa

from shared.db.engine import session_for
from shared.db.jobs import (
    claim_pending,
    mark_scored,
    scored_items,
    load_fusion_inputs,
    mark_failed,
    refresh_job,
    store_features,
    store_predictions,
)
from shared.db.models import Classifier, Job, utcnow
from shared.encoders.hf import encode_features
from shared.encoders.spec import features_key, specs_from_dict
from shared.errors import ArtifactError, ConfigError, EncoderError, JobNotFound
from shared.fusion.artifact import get_artifact
from shared.fusion.predict import decide_from_probabilities
from shared.llm import cache as llm_cache
from shared.llm.prompts import LabelSet, cache_key
from shared.llm.result import TextScore
from shared.llm.scoring import score_with_cache
from shared.llm.sources import get_scorer, source_spec
from shared.settings import Settings

log = logging.getLogger(__name__)
ENCODER_SIGNAL = "encoder"


def _job_classifier(session, job_id: str) -> tuple[Job, Classifier | None]:
    row = session.execute(
        sa.select(Job, Classifier).outerjoin(Classifier, Classifier.id == Job.classifier_id)
        .where(Job.id == uuid.UUID(job_id))
    ).first()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return row[0], row[1]


def _claim(settings: Settings, job_id: str, item_ids: list[int]):
    """(job, classifier or None, the pending items among ``item_ids`` now leased to this task)."""
    with session_for(settings.effective_database_url) as session, session.begin():
        job, classifier = _job_classifier(session, job_id)
        claimed = claim_pending(session=session, item_ids=item_ids, lease_seconds=settings.item_lease_seconds)
    return job, classifier, claimed


def embed_stage(settings: Settings, *, job_id: str, item_ids: list[int]) -> list[int]:
    """Encode the pending items among ``item_ids``; returns the ids that now have features."""
    url = settings.effective_database_url
    _, classifier, claimed = _claim(settings, job_id, item_ids)
    if not claimed:
        return []
    specs = specs_from_dict(classifier.encoder_spec)
    try:
        vectors, errors = _encode_isolating_failures(specs, claimed, settings)
    except EncoderError as exc:  # the encoder itself cannot load: retrying the same message cannot help
        vectors, errors = {}, {item.id: str(exc) for item in claimed}
    with session_for(url) as session, session.begin():
        if vectors:
            dim = len(next(iter(vectors.values()))) // np.dtype(np.float32).itemsize
            store_features(session=session, encoder_key=features_key(specs), vectors=vectors, dim=dim)
        if errors:
            mark_failed(session=session, errors=errors)
            refresh_job(session=session, job_id=uuid.UUID(job_id))
    return sorted(vectors)


def _encode_isolating_failures(specs, claimed, settings: Settings) -> tuple[dict[int, bytes], dict[int, str]]:
    """Encode all texts in one call; only if that fails, one by one, so a bad text fails alone."""
    texts = [item.text for item in claimed]
    options = {"device": settings.device, "max_tokens": settings.embed_max_tokens, "max_batch": settings.embed_max_batch}
    try:
        features = encode_features(specs, texts, **options)
        return {item.id: features[i].tobytes() for i, item in enumerate(claimed)}, {}
    except EncoderError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the batch: isolate the culprit below
        log.warning("batch of %d texts failed to encode (%s); retrying one by one", len(texts), exc)
    vectors, errors = {}, {}
    for item in claimed:
        try:
            vectors[item.id] = encode_features(specs, [item.text], **options)[0].tobytes()
        except Exception as exc:  # noqa: BLE001 - recorded on the item, never raised past it
            errors[item.id] = f"encoder failed on this text: {type(exc).__name__}: {exc}"
    return vectors, errors


def job_label_set(job: Job) -> tuple[LabelSet, bool]:
    """The label set and single/multi-label flag of an LLM-only job."""
    return LabelSet(names=tuple(job.labels["names"]), descriptions=tuple(job.labels.get("descriptions") or ())), bool(job.multi_label)


def llm_stage(settings: Settings, *, job_id: str, item_ids: list[int], source: str) -> list[int]:
    """Score the pending items of an LLM-only job with the ``source`` LLM, through the cache.

    An item whose answer failed (after the scorer's own retries) is marked failed with the reason;
    returns the ids that now have scores.
    """
    url = settings.effective_database_url
    job, _, claimed = _claim(settings, job_id, item_ids)
    if not claimed:
        return []
    labels, multi_label = job_label_set(job)
    try:
        scorer = get_scorer(source_spec(settings, source), settings, source=source)
        scores = score_with_cache(database_url=url, scorer=scorer, labels=labels, multi_label=multi_label,
                                  texts=[c.text for c in claimed], batch_size=len(claimed))
    except (EncoderError, ConfigError) as exc:  # the LLM cannot be built here: no retry can help
        scores = [TextScore.failed(str(exc))] * len(claimed)
    ok = [c.id for c, s in zip(claimed, scores) if s.method != "failed"]
    with session_for(url) as session, session.begin():
        mark_scored(session=session, item_ids=ok)
        failed = {c.id: s.error or "LLM answer failed" for c, s in zip(claimed, scores) if s.method == "failed"}
        if failed:
            mark_failed(session=session, errors=failed)
            refresh_job(session=session, job_id=uuid.UUID(job_id))
    return ok


def fusion_stage(settings: Settings, *, job_id: str, item_ids: list[int]) -> int:
    """Final predictions for the items among ``item_ids`` whose signals are in; returns how many were written."""
    with session_for(settings.effective_database_url) as session, session.begin():
        job, classifier = _job_classifier(session, job_id)
        if classifier is None:
            written = _llm_predictions(settings, session, job, item_ids)
        else:
            written = _classifier_predictions(session, classifier, item_ids)
        refresh_job(session=session, job_id=job.id)
    return written


def _classifier_predictions(session, classifier: Classifier, item_ids: list[int]) -> int:
    """Predictions of the classifier's fusion network from the stored encoder features."""
    inputs = load_fusion_inputs(session=session, item_ids=item_ids,
                                encoder_key=features_key(specs_from_dict(classifier.encoder_spec)))
    if not inputs:
        return 0
    try:
        artifact = get_artifact(classifier.artifact_uri, classifier.artifact_sha256)
    except ArtifactError as exc:
        mark_failed(session=session, errors={i.item_id: str(exc) for i in inputs})
        return 0
    features = np.stack([np.frombuffer(i.vector, dtype=np.float32, count=i.dim) for i in inputs])
    rows = _prediction_rows(artifact.decide(features), artifact.labels,
                            [(i.item_id, i.job_created_at) for i in inputs], [[ENCODER_SIGNAL]] * len(inputs))
    store_predictions(session=session, rows=rows)
    return len(rows)


def _prediction_rows(decision, label_names, items: list[tuple[int, dt.datetime]], signals: list[list[str]]) -> list[dict]:
    """Prediction rows for ``items`` (id, job created) from a batch decision, in the same order."""
    now = utcnow()
    return [{
        "item_id": item_id,
        "labels": [label_names[c] for c in np.flatnonzero(decision.label_matrix[row])],
        "probabilities": [round(float(p), 6) for p in decision.probabilities[row]],
        "confidence": float(decision.confidence[row]),
        "signals": item_signals,
        "latency_ms": _elapsed_ms(created, now),
        "created_at": now,
    } for row, ((item_id, created), item_signals) in enumerate(zip(items, signals))]


def _llm_predictions(settings: Settings, session, job: Job, item_ids: list[int]) -> int:
    """Predictions of an LLM-only job: the LLM's own probabilities, read from the cache."""
    labels, multi_label = job_label_set(job)
    spec = source_spec(settings, job.llm_source)
    items = scored_items(session=session, item_ids=item_ids)
    keys = {item_id: cache_key(backend=spec.backend, model=spec.model, labels=labels, multi_label=multi_label,
                               text_hash=th) for item_id, th, _ in items}
    found = llm_cache.lookup(session=session, keys=list(keys.values()), count_hits=False)
    missing = {item_id: "the LLM answer vanished from the cache; resubmit" for item_id, k in keys.items() if k not in found}
    present = [(item_id, created) for item_id, _, created in items if item_id not in missing]
    if missing:
        mark_failed(session=session, errors=missing)
    if not present:
        return 0
    probs = np.array([found[keys[item_id]].scores for item_id, _ in present], dtype=np.float64)
    decision = decide_from_probabilities(probs, multi_label=multi_label)
    signals = [[f"llm:{job.llm_source}:{found[keys[item_id]].method}"] for item_id, _ in present]
    store_predictions(session=session, rows=_prediction_rows(decision, labels.names, present, signals))
    return len(present)


def _elapsed_ms(start: dt.datetime, end: dt.datetime) -> float:
    if start.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        start = start.replace(tzinfo=dt.timezone.utc)
    return max((end - start).total_seconds() * 1000.0, 0.0)
