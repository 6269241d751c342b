"""Prometheus figures of fusionq, computed at each scrape from Postgres and the broker.

Read from the shared state rather than counted in each process, so they are right with any number
of worker processes and survive restarts: items per mode and status, jobs per status,
escalations, LLM requests and cost per tier, the submit-to-prediction latency histogram, queue
depths and live workers per queue. A scrape costs a few aggregate queries over the tables.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from shared.db.engine import session_for
from shared.db.models import Item, Job, LlmRequest, Prediction
from shared.settings import Settings

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
QUEUES = ("embed", "fusion", "llm_local", "llm_api", "maintenance")


class _Collector:
    def __init__(self, client, settings: Settings) -> None:
        self.client, self.settings = client, settings

    def collect(self):
        with session_for(self.settings.effective_database_url) as session:
            yield from _database_figures(session)
        if not self.settings.embedded:
            yield from _broker_figures(self.client)


def _database_figures(session):
    items = GaugeMetricFamily("fusionq_items", "Items by mode and status (done, failed: their outcome).",
                              labels=["mode", "status"])
    mode = sa.func.coalesce(Item.mode, Job.mode)
    for m, status, n in session.execute(sa.select(mode, Item.status, sa.func.count()).join(Job, Job.id == Item.job_id)
                                        .group_by(mode, Item.status)):
        items.add_metric([m, status], n)
    yield items
    jobs = GaugeMetricFamily("fusionq_jobs", "Jobs by status.", labels=["status"])
    for status, n in session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)):
        jobs.add_metric([status], n)
    yield jobs
    yield CounterMetricFamily("fusionq_escalations", "Items sent up to an LLM tier by auto mode.",
                              value=session.scalar(sa.select(sa.func.coalesce(sa.func.sum(Job.n_escalated), 0))))
    calls = GaugeMetricFamily("fusionq_llm_requests", "LLM requests by tier (source), reason and status.",
                              labels=["source", "reason", "status"])
    cost = CounterMetricFamily("fusionq_llm_cost_usd", "Dollars spent on LLM answers, by tier.", labels=["source"])
    spent: dict[str, float] = {}
    for source, reason, status, n, usd in session.execute(
            sa.select(LlmRequest.source, LlmRequest.reason, LlmRequest.status, sa.func.count(),
                      sa.func.coalesce(sa.func.sum(LlmRequest.cost_usd), 0.0))
            .group_by(LlmRequest.source, LlmRequest.reason, LlmRequest.status)):
        calls.add_metric([source, reason, status], n)
        spent[source] = spent.get(source, 0.0) + float(usd)
    for source, usd in spent.items():
        cost.add_metric([source], usd)
    yield calls
    yield cost
    latency_ms = Prediction.latency_ms
    counts = session.execute(sa.select(
        *[sa.func.count().filter(latency_ms <= bound * 1000) for bound in LATENCY_BUCKETS_S],
        sa.func.count(), sa.func.coalesce(sa.func.sum(latency_ms), 0.0))).one()
    histogram = HistogramMetricFamily("fusionq_submit_to_prediction_seconds",
                                      "From a job's submit to each item's stored prediction.")
    histogram.add_metric([], [(str(b), counts[i]) for i, b in enumerate(LATENCY_BUCKETS_S)] + [("+Inf", counts[-2])],
                         sum_value=float(counts[-1]) / 1000)
    yield histogram


def _broker_figures(client):
    dispatcher = client.dispatcher
    depth = GaugeMetricFamily("fusionq_queue_depth", "Messages waiting in each queue.", labels=["queue"])
    for queue, n in dispatcher.queue_depths(QUEUES).items():
        depth.add_metric([queue], n)
    yield depth
    workers = dispatcher.live_workers()
    per_queue = GaugeMetricFamily("fusionq_workers", "Live worker processes per queue (heartbeat within 20 s).",
                                  labels=["queue"])
    for queue in QUEUES:
        per_queue.add_metric([queue], sum(1 for w in workers.values() if queue in w.get("queues", [])))
    yield per_queue
    seen = GaugeMetricFamily("fusionq_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat.",
                             labels=["worker"])
    for name, worker in workers.items():
        seen.add_metric([name], max(time.time() - float(worker.get("at", 0)), 0.0))
    yield seen


def render(client, settings: Settings) -> tuple[bytes, str]:
    """The Prometheus exposition of the figures above, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(client, settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST
