"""Load: concurrent submitters with colliding idempotency keys get exactly one job per key, with no
error and no deadlock. Runs bench/submit_load.py small (real Postgres and Redis, no workers) and
prints its submits/s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, service_missing

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
BENCH_REDIS = "redis://127.0.0.1:6379/12"  # the one bench/common.py's scratch_services empties and uses


@pytest.fixture
def services_up():
    """Skip on a laptop without Postgres or Redis (fail in CI), before spending a subprocess on it."""
    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001
        service_missing("PostgreSQL at 127.0.0.1:5432", exc)
    finally:
        engine.dispose()
    try:
        redis.Redis.from_url(BENCH_REDIS).ping()
    except Exception as exc:  # noqa: BLE001
        service_missing("Redis at 127.0.0.1:6379", exc)


def test_colliding_idempotency_keys_under_concurrent_submits(services_up, tmp_path):
    out = tmp_path / "load.json"
    # 6 x 10 submits over 12 keys: most keys are sent by several processes, often at the same moment
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "submit_load.py"), "--processes", "6", "--jobs", "10", "--keys", "12",
         "--texts", "5", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert out.exists(), f"no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    checks = result["checks"]
    print(f"\nsubmit load: {result['total_submits']} submits from {result['processes']} processes over "
          f"{result['distinct_keys_used']} keys: {result['submits_per_s']} submits/s, "
          f"p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms")
    assert result["errors"] == 0, result["first_errors"]
    assert checks["keys_with_more_than_one_job_id"] == 0
    assert checks["keys_with_one_job_row"] == result["distinct_keys_used"] == checks["job_rows"]
    assert checks["jobs_with_wrong_item_count"] == 0
    assert checks["keys_whose_returned_id_is_not_stored"] == 0
    assert checks["deadlocks"] == 0
    assert result["total_submits"] == 6 * 10
    assert proc.returncode == 0, proc.stderr[-4000:]
