"""The Celery app factory: queues, routing and the reliability settings every worker shares.

Importing this module builds no app; ``workers.app`` is the one the ``celery`` command loads
(``celery -A workers.app worker -Q embed -c 1 -E``), and ``workers.dispatch`` builds its own from
the client's settings.
"""

from __future__ import annotations

import logging
import os
import signal

from celery import Celery
from celery.signals import task_postrun, worker_init, worker_process_init, worker_ready
from kombu import Queue

from shared.db.engine import dispose_engines, test_connections_before_use
from shared.settings import Settings, get_settings, is_in_process_broker
from shared.dispatch import TaskName
from shared.gc_freeze import freeze_survivors_after_slow_collection, watch_full_collections
from workers import embed, fusion, llm_api, llm_local, maintenance, submit
from workers.cores import even_share, share_among_children
from workers.memory import resident_mb
from workers.presence import start_announcing

log = logging.getLogger(__name__)

QUEUES = ("embed", "llm_local", "llm_api", "fusion", "maintenance", "submit")
TASK_ROUTES = {
    str(TaskName.EMBED): {"queue": "embed"},
    str(TaskName.FUSE): {"queue": "fusion"},
    "fusionq.llm_local.*": {"queue": "llm_local"},
    "fusionq.llm_api.*": {"queue": "llm_api"},
    "fusionq.maintenance.*": {"queue": "maintenance"},
    str(TaskName.SUBMIT): {"queue": "submit"},
}


EMBEDDED_POLL_SECONDS = 0.01


def create_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``, with every fusionq task defined on it."""
    app = Celery("fusionq", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="fusion",
        task_routes=TASK_ROUTES,
        # JSON only: a pickled message from the broker is never executed.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Postgres holds results; messages only say "work on these ids".
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged after it ran, and redelivered if its worker dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Hard limit well under the visibility timeout, so Redis never redelivers a running task.
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=int(settings.task_time_limit * 0.9),
        broker_transport_options={"visibility_timeout": settings.visibility_timeout,
                                  # the in-memory broker is polled (1 s by default): that idled the embedded
                                  # worker between messages; a poll of an in-process dict costs nothing
                                  **({"polling_interval": EMBEDDED_POLL_SECONDS} if settings.embedded else {})},
        broker_connection_retry_on_startup=True,
        # Recycling: Celery replaces a prefork child past this (KiB); a solo or threads worker stops
        # itself after its task (_recycle_when_over_memory) and its supervisor starts a fresh one.
        worker_max_memory_per_child=settings.worker_max_memory_mb * 1024 if settings.worker_max_memory_mb else None,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        # The sweeper: one beat process sends it; a sweep that could not run in time is dropped.
        beat_schedule={"sweep-expired-leases": {"task": str(TaskName.SWEEP), "schedule": settings.sweep_interval,
                                                "options": {"expires": settings.sweep_interval}}},
    )
    embed.register(app, settings=settings)
    fusion.register(app, settings=settings)
    llm_local.register(app, settings=settings)
    llm_api.register(app, settings=settings)
    maintenance.register(app, settings=settings)
    submit.register(app, settings=settings)
    return app


_IN_PREFORK_CHILD = False
_WORKER_PID: int | None = None  # the worker's own process, where worker_init ran
_WORKER = None  # its WorkController: a prefork child reads the pool's size from it


@worker_process_init.connect
def _forget_parent_connections(**_kwargs) -> None:
    # A prefork child must open its own database connections; models load lazily on first use.
    # The solo pool sends this signal too, in the worker's own process: that is no child (and
    # recycles itself after its task, _recycle_when_over_memory). A child inherits the parent's
    # garbage-collector watch with its memory.
    global _IN_PREFORK_CHILD
    _IN_PREFORK_CHILD = os.getpid() != _WORKER_PID
    dispose_engines()
    _limit_torch_threads()


@task_postrun.connect
def _freeze_long_lived_objects(**_kwargs) -> None:
    # After the task, so a freeze never delays the task that saw a slow collection (shared.gc_freeze).
    freeze_survivors_after_slow_collection()


@task_postrun.connect
def _recycle_when_over_memory(sender=None, **_kwargs) -> None:
    """A solo or threads worker (the task ran in the worker's own process) past the memory limit asks
    itself for a warm shutdown: the task is finished and acknowledged, nothing is lost, and the
    supervisor (compose's restart policy, Kubernetes) starts a fresh process. Prefork children are
    Celery's to replace; the embedded worker lives in the caller's process and is never stopped."""
    app = getattr(sender, "app", None)
    limit_kib = app.conf.get("worker_max_memory_per_child") if app is not None else None
    if not limit_kib or _IN_PREFORK_CHILD or is_in_process_broker(app.conf.get("broker_url")):
        return
    resident = resident_mb()
    if resident is not None and resident * 1024 > limit_kib:
        log.warning("worker uses %.0f MB, over FUSIONQ_WORKER_MAX_MEMORY_MB=%d: warm shutdown for a fresh process",
                    resident, limit_kib // 1024)
        os.kill(os.getpid(), signal.SIGTERM)


@worker_ready.connect
def _announce(sender, **_kwargs) -> None:
    """Say in the broker that this worker is alive, for /readyz and the metrics (workers.presence)."""
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) \
        if sender.app.amqp.queues.consume_from else list(QUEUES)
    start_announcing(sender.app, sender.hostname, queues)


@worker_init.connect
def _on_worker_start(sender, **_kwargs) -> None:
    global _WORKER_PID, _WORKER
    _WORKER_PID, _WORKER = os.getpid(), sender
    # A worker process's tasks retry on a dead connection (workers.retry), so no round trip tests
    # each connection first (prefork children inherit this). The embedded worker shares its
    # caller's process, whose reads must ride out a restart: it keeps the test. Its garbage
    # collector is the caller's too: only worker processes (and `fusionq serve`) freeze their heap.
    if not is_in_process_broker(sender.app.conf.get("broker_url")):
        test_connections_before_use(False)
        watch_full_collections()
        if not get_settings().torch_threads:
            share_among_children()  # made before a prefork pool forks; a solo or threads pool never reads it
    _limit_torch_threads()


def _limit_torch_threads() -> None:
    """Apply FUSIONQ_TORCH_THREADS: a fusion worker on a small box must not fight the encoder for cores.
    Unset, a prefork child starts on its even share of the cores (workers.cores)."""
    threads = get_settings().torch_threads
    if not threads and _IN_PREFORK_CHILD:
        threads = even_share(int(getattr(_WORKER, "concurrency", 1) or 1))
        log.info("prefork child: %d torch thread(s) to start, more while its siblings are idle", threads)
    if threads:
        import torch  # setting CPU threads does not initialise CUDA

        torch.set_num_threads(threads)

