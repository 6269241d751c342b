"""What every benchmark does the same way: say which machine it ran on, and write its JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from shared.encoders.precision import cpu_description


def machine() -> dict:
    """Date, CPU model and the flags that decide precision, cores and Python: print them with every figure."""
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}"}


def write_result(result: dict, out: str | Path) -> None:
    """The result as JSON in ``out`` (folders made) and on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
