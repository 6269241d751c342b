"""The ``fusion`` stage, the aggregator: fuse the signals an item has, then finish it or send it up a tier.

Runs under the job's row lock, so budget checks and the job's completion see every other
aggregator's work. The rules it applies are ``shared.service.policy``'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.db.aggregation import AggregationInput, load_aggregation_inputs
from shared.db.common import on_postgres
from shared.db.engine import session_for
from shared.db.items import mark_failed, store_predictions
from shared.db.jobs import count_finished, job_with_classifier, lock_job
from shared.db.llm import add_requests, llm_usage_by_source, request_row
from shared.db.models import Classifier, Job, utcnow
from shared.encoders.spec import features_key, specs_from_dict
from shared.errors import ArtifactError, CircuitOpen, ConfigError
from shared.fusion.artifact import ClassifierArtifact, get_artifact
from shared.fusion.predict import Decision, decide_from_probabilities
from shared.llm.sources import source_breaker
from shared.schemas import as_utc
from shared.service.claims import job_label_set
from shared.service.policy import Budget, BudgetLedger, Tier, plan_escalation
from shared.settings import Settings
from shared.vocab import (
    ENCODER_SIGNAL,
    ItemStatus,
    Mode,
    RequestReason,
    RequestStatus,
    llm_signal,
    missing_flag,
)

log = logging.getLogger(__name__)


@dataclass
class AggregateOutcome:
    """What one aggregator run did: predictions written, and items to send up a tier (source -> ids)."""

    written: int = 0
    failed: int = 0
    escalate: dict[str, list[int]] = field(default_factory=dict)


def fusion_stage(settings: Settings, *, job_id: str, item_ids: list[int]) -> AggregateOutcome:
    """Fuse the signals of the items among ``item_ids`` that are not waiting for anything, then
    finish each one or send it one tier up. Runs under the job's row lock, so budget checks and
    the job's completion see every other aggregator's work."""
    with session_for(settings.effective_database_url) as session, session.begin():
        job, classifier = job_with_classifier(session=session, job_id=job_id)
        lock_job(session=session, job_id=job.id)  # refreshes ``job`` in place
        outcome = _aggregate(settings, session, job, classifier, item_ids)
        count_finished(session=session, job_id=job.id, done=outcome.written, failed=outcome.failed)
    return outcome


def _aggregate(settings: Settings, session, job: Job, classifier: Classifier | None, item_ids: list[int]) -> AggregateOutcome:
    key = features_key(specs_from_dict(classifier.encoder_spec)) if classifier else None
    ready = [i for i in load_aggregation_inputs(session=session, item_ids=item_ids, encoder_key=key) if not i.waiting]
    modes = {i.item_id: i.mode or job.mode for i in ready}
    llm_alone = [i for i in ready if modes[i.item_id] == Mode.LLM]
    fused = [i for i in ready if modes[i.item_id] != Mode.LLM and i.vector is not None]
    outcome = AggregateOutcome()
    rows, failed = _llm_alone_rows(session, job, classifier, llm_alone)
    outcome.failed += failed
    if fused:
        try:
            artifact = get_artifact(classifier.artifact_uri, classifier.artifact_sha256)
        except ArtifactError as exc:
            outcome.failed += sum(mark_failed(session=session, errors={i.item_id: str(exc) for i in fused}).values())
            fused = []
    if fused:
        decision = _fuse(artifact, fused)
        tiers = [Tier(t["source"], t["threshold"]) for t in job.tiers or []]
        plans = _plan_auto_items(settings, session, job, artifact, tiers, fused, decision, modes)
        keep = []
        for row, item in enumerate(fused):
            if modes[item.item_id] == Mode.AUTO and tiers and item.item_id not in plans:
                continue  # escalated by another aggregator: it comes back with the LLM's answer
            plan = plans.get(item.item_id)
            if plan is not None and plan.ask is not None:
                outcome.escalate.setdefault(plan.ask.source, []).append(item.item_id)
                continue
            flags = [missing_flag(r.source) for r in item.requests.values() if r.status in (RequestStatus.FAILED, RequestStatus.SKIPPED)]
            flags += [f for f in (plan.flags if plan else ()) if f not in flags]
            keep.append((row, item, flags))
        if keep:
            rows += _prediction_rows(
                _take(decision, [row for row, _, _ in keep]), artifact.labels,
                [(item.item_id, item.job_created_at) for _, item, _ in keep],
                [_signals(item) for _, item, _ in keep], [flags for _, _, flags in keep])
    if rows:
        outcome.written = store_predictions(session=session, item_ids=[r["item_id"] for r in rows],
                                            make_rows=lambda: rows)
    return outcome


def finish_fast_items(session, job: Job, artifact: ClassifierArtifact, features: np.ndarray,
                      item_ids: list[int], *, token: int) -> int:
    """Predictions for fast-mode items straight from their features, in the embed stage's transaction
    and under its claim ``token``: no LLM signal can join them, so the aggregator's hop would only
    add a message and a commit. Returns how many items this finished (and counts them on the job)."""
    if not item_ids:
        return 0

    def rows() -> list[dict]:  # the network's decision runs while Postgres marks the items done
        with torch_threads_beside_postgres(session):
            decision = artifact.decide(features)
        return _prediction_rows(decision, artifact.labels, [(i, job.created_at) for i in item_ids],
                                [[ENCODER_SIGNAL] for _ in item_ids], [[] for _ in item_ids])

    done = store_predictions(session=session, item_ids=item_ids, make_rows=rows, from_statuses=(ItemStatus.PENDING,),
                             token=token)
    count_finished(session=session, job_id=job.id, done=done)
    return done


@contextlib.contextmanager
def torch_threads_beside_postgres(session) -> Iterator[None]:
    """torch on one thread fewer for the block when ``session`` is on Postgres, whose server then
    runs ``store_predictions``' UPDATE on another core: a team of two sharing that core stalls at
    every barrier (the overlap bought nothing with both threads, docs/BENCHMARKS.md, issue 10,
    fourteenth session). On SQLite nothing runs beside: torch keeps its threads."""
    threads = torch.get_num_threads()
    if not on_postgres(session) or threads < 2:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fuse(artifact: ClassifierArtifact, items: list[AggregationInput]) -> Decision:
    """One batched decision of the fusion network over each item's features and present LLM scores."""
    features = np.stack([np.frombuffer(i.vector, dtype=np.float32, count=i.dim) for i in items])
    sources = artifact.llm_sources
    if not sources:
        return artifact.decide(features)
    scores = np.zeros((len(items), len(sources), len(artifact.labels)), dtype=np.float32)
    mask = np.zeros((len(items), len(sources)), dtype=np.float32)
    for row, item in enumerate(items):
        for s, source in enumerate(sources):
            request = item.requests.get(source)
            if request is not None and request.status == RequestStatus.DONE:
                scores[row, s], mask[row, s] = request.scores, 1.0
    return artifact.decide(features, scores, mask)


def _take(decision: Decision, rows: list[int]) -> Decision:
    return Decision(probabilities=decision.probabilities[rows], label_matrix=decision.label_matrix[rows],
                    confidence=decision.confidence[rows])


def _signals(item: AggregationInput) -> list[str]:
    signals = [ENCODER_SIGNAL] if item.vector is not None else []
    return signals + [llm_signal(r.source, r.method) for r in sorted(item.requests.values(), key=lambda r: r.tier)
                      if r.status == RequestStatus.DONE]


def _plan_auto_items(settings: Settings, session, job: Job, artifact: ClassifierArtifact, tiers: list[Tier],
                     items: list[AggregationInput], decision: Decision, modes: dict[int, str]) -> dict:
    """Plans for the auto items; records skipped tiers and admitted escalations (guarded by the
    unique (item, source) key, so each happens at most once). An item whose escalation another
    aggregator recorded first gets no plan: its LLM answer will bring it back."""
    auto = [(row, i) for row, i in enumerate(items) if modes[i.item_id] == Mode.AUTO]
    if not auto or not tiers:
        return {}
    ledger = _budget_ledger(session, job, artifact)
    unavailable = _unavailable_sources(settings, tiers)
    now = utcnow()
    tier_index = {t.source: n for n, t in enumerate(tiers)}
    plans, new_rows, first_time = {}, [], {}
    for row, item in auto:
        escalated_before = any(r.status != RequestStatus.SKIPPED for r in item.requests.values())
        plan = plan_escalation(float(decision.confidence[row]), tiers, climbed=set(item.requests),
                               escalated_before=escalated_before, unavailable=unavailable, ledger=ledger)
        for source, reason in plan.skipped.items():
            new_rows.append(request_row(job_id=job.id, item_id=item.item_id, tier=tier_index[source], source=source,
                                        reason=RequestReason.ESCALATION, now=now,
                                        status=RequestStatus.SKIPPED,
                                        error=f"tier {source} skipped: {reason}"))
        if plan.ask is not None:
            new_rows.append(request_row(job_id=job.id, item_id=item.item_id, tier=tier_index[plan.ask.source],
                                        source=plan.ask.source, reason=RequestReason.ESCALATION, now=now))
            first_time[item.item_id] = not escalated_before
        plans[item.item_id] = plan
    added = add_requests(session=session, rows=new_rows)
    job.n_escalated += sum(1 for item_id in added if first_time.get(item_id))
    return {item_id: plan for item_id, plan in plans.items() if plan.ask is None or item_id in added}


def _budget_ledger(session, job: Job, artifact: ClassifierArtifact) -> BudgetLedger | None:
    budget = Budget(items=job.budget_items, usd=job.budget_usd)
    if budget.unlimited:
        return None
    usage = llm_usage_by_source(session=session, job_id=job.id)
    prior = float((artifact.escalation or {}).get("llm_cost_per_text_usd") or 0.0)
    estimate = {source: (u["cost_usd"] / u["done"] if u["done"] else prior) for source, u in usage.items()}
    for tier in job.tiers or []:
        estimate.setdefault(tier["source"], prior)
    return BudgetLedger(budget=budget, items_escalated=job.n_escalated,
                        spent_usd=sum(u["cost_usd"] for u in usage.values()),
                        in_flight_usd=sum(u["queued"] * estimate[s] for s, u in usage.items()), cost_estimate=estimate)


def _unavailable_sources(settings: Settings, tiers: list[Tier]) -> dict[str, str]:
    """Tiers whose breaker is open now, with the reason. A tier this worker cannot see (its LLM is
    configured only on the LLM workers) counts as up: if it is not, its requests fail and the
    items finish flagged all the same."""
    down = {}
    for tier in tiers:
        try:
            breaker = source_breaker(settings, tier.source)
            if breaker is not None:
                breaker.check()
        except ConfigError:
            continue
        except CircuitOpen as exc:
            down[tier.source] = str(exc)
    return down


def _llm_alone_rows(session, job: Job, classifier: Classifier | None,
                    items: list[AggregationInput]) -> tuple[list[dict], int]:
    """Prediction rows of items answered by the LLM alone (mode ``llm``): its own probabilities;
    and how many such items failed now, having no answer."""
    if not items:
        return [], 0
    labels, multi_label = job_label_set(job, classifier)
    answered = [(i, r) for i in items for r in i.requests.values() if r.status == RequestStatus.DONE]
    failed = {i.item_id: next((r.error for r in i.requests.values()), None) or "no LLM answer" for i in items
              if not any(r.status == RequestStatus.DONE for r in i.requests.values())}
    n_failed = sum(mark_failed(session=session, errors=failed).values()) if failed else 0
    if not answered:
        return [], n_failed
    decision = decide_from_probabilities(np.array([r.scores for _, r in answered], dtype=np.float64), multi_label=multi_label)
    return _prediction_rows(decision, labels.names, [(i.item_id, i.job_created_at) for i, _ in answered],
                            [[llm_signal(r.source, r.method)] for _, r in answered], [[] for _ in answered]), n_failed


def _prediction_rows(decision, label_names, items: list[tuple[int, dt.datetime]], signals: list[list[str]],
                     flags: list[list[str]]) -> list[dict]:
    """Prediction rows for ``items`` (id, job created) from a batch decision, in the same order.

    Whole arrays become Python numbers at once (``tolist``): per value, ``float()`` and ``round()``
    cost more than the database's write of the row. Probabilities keep six decimals."""
    now = utcnow()
    probabilities = np.round(np.asarray(decision.probabilities, dtype=np.float64), 6).tolist()
    confidence = np.asarray(decision.confidence, dtype=np.float64).tolist()
    names = np.asarray(label_names, dtype=object)
    chosen = np.asarray(decision.label_matrix, dtype=bool)
    elapsed = {created: _elapsed_ms(created, now) for created in {created for _, created in items}}
    return [{
        "item_id": item_id,
        "labels": names[chosen[row]].tolist(),
        "probabilities": probabilities[row],
        "confidence": confidence[row],
        "signals": item_signals,
        "flags": item_flags,
        "latency_ms": elapsed[created],
    } for row, ((item_id, created), item_signals, item_flags) in enumerate(zip(items, signals, flags))]


def _elapsed_ms(start: dt.datetime, end: dt.datetime) -> float:
    return max((end - as_utc(start)).total_seconds() * 1000.0, 0.0)
