"""The benchmarks' machinery, seconds-long: ``bench/run_all.py --smoke`` on a few of them.

The figures of a smoke run mean little (tiny counts, a shared CI machine); this proves that the
broker, the fakes process, the raw baseline, the daemon subprocess, the measurements and the
report still fit together. ``make bench`` runs the real thing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_produces_figures_and_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/run_all.py",
            "--smoke",
            "--no-profile",
            "--only",
            "throughput",
            "ratelimit",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    document = json.loads(out.read_text())
    results = document["results"]
    throughput = results["throughput"]
    assert throughput["daemon"]["results"] == throughput["events"]
    assert throughput["raw"]["results"] == throughput["events"]
    assert throughput["daemon_statuses"] == {"succeeded": throughput["events"]}
    assert throughput["daemon"]["rate"] > 0 and throughput["raw"]["rate"] > 0
    for limit in results["ratelimit"]["limits"].values():
        assert limit["accepted_in_window"] > 0
    assert document["machine"]["cores"] and document["machine"]["libraries"]["aiokafka"]
    assert "ratio daemon / raw" in proc.stdout
