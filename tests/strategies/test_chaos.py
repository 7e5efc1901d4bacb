"""The chaos run in small (``bench/chaos.py``): primary_backup over the Salesforce and HubSpot
fakes, a primary that fails intermittently (503s, lost responses, stalls past the client's
timeout), and the daemon SIGKILLed and restarted twice while it works through 500 events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos import ChaosOptions, run_chaos

pytestmark = pytest.mark.slow


async def test_two_sigkills_under_a_flaky_primary_lose_and_double_nothing(broker: Any, tmp_path: Path) -> None:
    lines: list[str] = []
    opts = ChaosOptions(events=500, keys=40, kill_at=(0.3, 0.65), timeout_s=75, idle_s=20)
    report = await run_chaos(opts, bootstrap=broker.bootstrap, workdir=tmp_path, out=lines.append)
    printed = "\n".join(lines)

    assert len(report["kills"]) == 2, printed
    assert report["events_produced"] == 500
    # nothing lost: every event has a final result (succeeded, fallback or failed) ...
    assert report["events_with_no_result"] == 0, printed
    assert report["events_with_final_result"] == 500, printed
    # ... naming a record that exists and belongs to it
    assert report["final_results_naming_no_such_record"] == 0, printed
    # nothing doubled: each (event, target) at most once in the fakes, and no stray records
    assert report["pairs_with_more_than_one_record"] == 0, printed
    assert report["records_of_no_produced_event"] == 0, printed
    # the claim: no (event, target) reported as delivered twice, and no vendor call repeated across
    # a SIGKILL or by two copies racing (only lost responses make a second call)
    assert report["pairs_with_two_success_results"] == 0, printed
    assert report["duplicate_vendor_calls_crash_or_race"] == 0, printed
    assert report["records_primary"] + report["records_backup"] >= 500, printed
    # the chaos really happened: faults on the primary, lost responses absorbed by its upsert
    assert report["faults_primary"].get("fail", 0) > 0, printed
    assert report["faults_primary"].get("lost", 0) > 0, printed
    assert report["rewrites_primary"]["after_a_lost_response"] > 0, printed
    assert report["last_exit_code"] == 0, printed
    assert report["ok"], printed
