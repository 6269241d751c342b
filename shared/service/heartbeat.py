"""A worker's heartbeat: while a stage works on what it claimed, a thread renews the claim's lease.

The lease is short (FUSIONQ_ITEM_LEASE_SECONDS), so a worker that dies, is paused or loses its
database stops renewing and the sweeper sends its work again within seconds, while a slow batch
on a live worker is never taken from it. Renewal runs every third of the lease: two beats may
fail before the lease runs out.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from shared.db.common import lease_end
from shared.db.engine import session_for
from shared.db.models import utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

Renew = Callable[[Session, dt.datetime], int]


class LeaseHeartbeat:
    """``with LeaseHeartbeat(settings, renew):`` renews through ``renew(session, new_lease_end)`` (which
    returns how many rows the claim still holds) until the block ends."""

    def __init__(self, settings: Settings, renew: Renew) -> None:
        self.url = settings.effective_database_url
        self.lease_seconds = settings.item_lease_seconds
        self.renew = renew
        self.beats = 0
        self.lost = False  # the claim holds nothing any more (taken over, or finished elsewhere)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fusionq-lease-heartbeat", daemon=True)

    def __enter__(self) -> "LeaseHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lease_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with session_for(self.url) as session, session.begin():
                    held = self.renew(session, lease_end(utcnow(), self.lease_seconds))
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; if all fail the lease lapses
                log.warning("could not renew a claim's lease (%s: %s); the work is sent again if it lapses",
                            type(exc).__name__, exc)
                continue
            self.beats += 1
            if held == 0:
                self.lost = True
                return
