"""How every task survives a database outage (a Postgres restart, a failover): retry with backoff.

Only database connection errors are retried here; LLM provider faults are retried inside the
scorer (one retry loop, never two). If the retries run out, the item's lease still expires and
the sweeper sends the work again.
"""

from sqlalchemy.exc import InterfaceError, OperationalError

DB_RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": 1, "retry_backoff_max": 30,
            "retry_jitter": True, "max_retries": 10}
