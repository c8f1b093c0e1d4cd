"""The prepared GPU check runs here too, on the CPU and a 2-layer model: its CPU-only parts.

The figures of a CPU run mean nothing; what must hold is that every part runs, the fp32 engine
agrees with PEFT token for token, and the table comes out (so a lent GPU's few minutes are
never spent on a script that breaks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu_and_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--quick"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("gpu_check | adapterhub") and "device  cpu (" in out  # the header first
    table = out[out.index("\ncheck "):]
    assert "FAILED" not in table, out
    fp32 = next(line for line in table.splitlines() if line.startswith("engine == PEFT, fp32"))
    assert fp32.split()[-2:] == ["4/4", "ok"], fp32
    for row in ("engine == PEFT, nf4", "8 adapters mixed", "cold load", "adapterhub / plain TRL"):
        assert row in table, (row, table)
