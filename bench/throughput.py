"""1. Throughput ceiling: the daemon end to end against the raw baseline, in the same run.

A backlog of N events sits on a 4-partition topic; a zero-latency webhook fake receives the
deliveries. The raw baseline (``bench/raw.py``: aiokafka consume → one aiohttp POST → produce →
commit, nothing else) drains it, and the daemon drains an identical backlog (consume →
decode/validate → route → render → HTTP → ledger → result acked → commit). Both are measured the
same way (``common.drain``), in ``ROUNDS`` rounds whose order alternates (raw first, then daemon
first, ...): the ratio is taken per round and averaged, with its range, because a single pair of
drains varies by 10-15 % on a shared 2-core machine (in one run on 2026-12-08 the raw loop alone
took 157–228 µs per event from round to round). Four rounds: each side goes first twice.

The integration's rate limit is raised out of the way so the measurement is of the pipeline, not
of the webhook's default pacing (1,000 requests/s).

With ``--profile`` (``run_all`` does it too) a third, separate daemon run is sampled with py-spy
and the functions that dominate are listed (the measured run is never profiled).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    OUT,
    ROOT,
    Broker,
    DaemonProc,
    Fakes,
    RawProc,
    bench_main,
    drain,
    events_for,
    produce,
    public,
    webhook_integration,
)

__all__ = ["daemon_config", "run"]

PARTITIONS = 4
# raw and daemon drains per run: one run of each varies by 10-15 % on a shared 2-core machine
ROUNDS = 4


def daemon_config(url: str) -> dict[str, Any]:
    return {"crmIntegrations": [webhook_integration("hook", url)]}


async def run(smoke: bool = False, *, profile: bool = False, rounds: int | None = None) -> dict[str, Any]:
    events = 2_000 if smoke else 30_000
    rounds = rounds or (1 if smoke else ROUNDS)
    out: dict[str, Any] = {"events": events, "partitions": PARTITIONS, "fake_latency_s": 0.0, "rounds": rounds}
    runs: list[dict[str, Any]] = []
    statuses: collections.Counter[str] = collections.Counter()
    with Broker("throughput") as broker:
        async with Fakes({"name": "hook", "latency": 0.0}) as fakes:
            url = fakes.hook("hook")
            backlog = events_for("t-bench", events)
            others = {"broker": broker.pid, "fakes": fakes.pid}

            async def drain_raw(index: int) -> dict[str, Any]:
                topics = await broker.topics(f"raw{index}", PARTITIONS)
                produced = await produce(broker.bootstrap, topics.input, backlog)
                out.setdefault("produce_s", round(produced, 2))
                raw = RawProc(broker.bootstrap, topics, url, PARTITIONS)
                try:
                    return await drain(
                        broker.bootstrap, topics, [raw], events=events, partitions=PARTITIONS, others=others
                    )
                finally:
                    await raw.stop()

            async def drain_daemon(index: int) -> dict[str, Any]:
                topics = await broker.topics(f"daemon{index}", PARTITIONS)
                await produce(broker.bootstrap, topics.input, backlog)
                daemon = DaemonProc(broker.bootstrap, topics, daemon_config(url), f"throughput{index}")
                try:
                    measured = await drain(
                        broker.bootstrap, topics, [daemon], events=events, partitions=PARTITIONS, others=others
                    )
                finally:
                    out["daemon_exit"] = await daemon.stop()
                statuses.update(_status(r.value) for r in measured["records"])
                return measured

            # the order alternates from round to round, so that a drift of the machine's load
            # does not favour one side; the ratio is taken per round (same minutes) and averaged
            for index in range(rounds):
                if index % 2 == 0:
                    baseline = await drain_raw(index)
                    measured = await drain_daemon(index)
                else:
                    measured = await drain_daemon(index)
                    baseline = await drain_raw(index)
                ratio = round(measured["rate"] / baseline["rate"], 3) if baseline["rate"] else 0.0
                runs.append({"raw": public(baseline), "daemon": public(measured), "ratio": ratio})
            out["daemon_statuses"] = dict(statuses)

            if profile:
                out["profile"] = await _profile(broker, url, backlog)
            stats = await fakes.stats("hook")
    out["raw"] = _mean_of(r["raw"] for r in runs)
    out["daemon"] = _mean_of(r["daemon"] for r in runs)
    ratios = [r["ratio"] for r in runs]
    out["ratio"] = round(statistics.fmean(ratios), 3)
    out["ratio_range"] = [min(ratios), max(ratios)]
    out["runs"] = runs
    out["target_ratio"] = 0.8
    out["fake"] = {k: stats[k] for k in ("requests", "created", "unique_keys", "replays")}
    return out


def _mean_of(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over the rounds: rate and CPU per event averaged, the rest of the last round."""
    runs = list(results)
    out = dict(runs[-1])
    for key in ("rate", "cpu_us_per_event", "cpu_pct"):
        out[key] = round(statistics.fmean(r[key] for r in runs), 1)
    return out


def _status(value: bytes) -> str:
    import orjson

    return str(orjson.loads(value).get("status"))


def _pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


async def _profile(broker: Broker, url: str, backlog: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Sample a separate daemon run with py-spy; return the top frames by self and total time."""
    pyspy = _pyspy()
    if pyspy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    topics = await broker.topics("profile", PARTITIONS)
    await produce(broker.bootstrap, topics.input, backlog)
    daemon = DaemonProc(broker.bootstrap, topics, daemon_config(url), "profile")
    raw_path = OUT / "profile-collapsed.txt"
    recorder: list[subprocess.Popen[bytes]] = []

    def attach(procs: list[Any]) -> None:
        recorder.append(
            subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(procs[0].pid),
                    "--rate",
                    "200",
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(raw_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        profiled = await drain(
            broker.bootstrap, topics, [daemon], events=len(backlog), partitions=PARTITIONS, on_start=attach
        )
    finally:
        for proc in recorder:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 30)
        await daemon.stop()
    if not raw_path.exists():
        return {"skipped": "py-spy produced no samples (ptrace not permitted?)"}
    summary = summarize_collapsed(raw_path.read_text())
    summary["rate_while_sampled"] = profiled["rate"]
    summary["collapsed_stacks"] = str(raw_path.relative_to(ROOT))
    return summary


def summarize_collapsed(text: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    ours_incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_count[_frame(frames[-1])] += count
        seen = set()
        for frame in frames:
            name = _frame(frame)
            if name not in seen:
                incl[name] += count
                seen.add(name)
                if any(p in frame for p in ("daemon/", "adapters/", "strategies/")):
                    ours_incl[name] += count

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "self_pct": share(self_count),
        "ours_inclusive_pct": share(ours_incl),
        "inclusive_pct": share(incl),
    }


def _frame(frame: str) -> str:
    # "function (path/to/file.py:123)" → "function (file.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def _options(parser: Any) -> None:
    parser.add_argument("--profile", action="store_true", help="also sample a separate daemon run with py-spy")


if __name__ == "__main__":
    bench_main("throughput", __doc__ or "", lambda a: run(a.smoke, profile=a.profile), _options)
