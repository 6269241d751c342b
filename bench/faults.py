"""Recovery time and work re-done per fault: runs the fault tests and tabulates what they report.

    python bench/faults.py            # writes bench/out/faults.json and prints a Markdown table

Each fault test (tests/faults/test_faults.py) breaks a running system mid-job, with the shipped
lease and sweep settings, and appends one JSON line: recovery time, items lost, duplicate
predictions, items re-processed, items whose lost message was re-sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    report = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    report.write_text("")
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/faults/test_faults.py"], cwd=ROOT,
                           env={**os.environ, "FUSIONQ_TEST_FAULT_REPORT": str(report), "HF_HUB_OFFLINE": "1"})
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    out = ROOT / "bench" / "out" / "faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| fault | recovered in | items | lost | duplicates | re-processed | lost-message re-sends | flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "items" not in r:  # a fault that stores nothing (refused at submit): its own figures
            extra = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("fault", "recovered_s"))
            print(f"| {r['fault']} | {extra} | 0 | 0 | 0 | 0 | 0 | 0 |")
            continue
        taken = f" (taken up {r['taken_up_after_replacement_s']:.1f} s after the replacement)" \
            if "taken_up_after_replacement_s" in r else ""
        print(f"| {r['fault']} | {r['recovered_s']:.1f} s{taken} | {r['items']} | {r['lost']} | {r['duplicates']} | "
              f"{r['reprocessed']} | {r['lost_message_resends']} | {r['flagged']} |")
    return code


if __name__ == "__main__":
    sys.exit(main())
