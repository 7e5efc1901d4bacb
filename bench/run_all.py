"""Run every benchmark, print one table, write ``bench/out/results.json``.

``python bench/run_all.py [--smoke] [--only NAME ...] [--no-profile]`` (``make bench`` runs it).
The daemons' logs and ledgers of the last run are kept under ``bench/out/work/``.
Each benchmark starts its own broker and fakes and runs the real daemon as a subprocess; they run
one after another so they never share the machine. The latency benchmark runs at half of the
throughput the throughput benchmark measured. ``--smoke`` is the seconds-long version with small
counts (the figures mean little; it proves the machinery works).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fleet, isolation, latency, memory, ratelimit, scaleout, throughput
from bench.common import OUT, ROOT, machine_info
from bench.report import table

__all__ = ["BENCHMARKS", "main", "run_all"]

BENCHMARKS = ("throughput", "ratelimit", "isolation", "latency", "memory", "scaleout", "fleet")


async def run_all(smoke: bool, only: list[str], profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        print(f"[bench] {name} …", flush=True)
        started = time.monotonic()
        try:
            if name == "throughput":
                results[name] = await throughput.run(smoke, profile=profile and not smoke)
            elif name == "latency":
                max_rate = results.get("throughput", {}).get("daemon", {}).get("rate")
                results[name] = await latency.run(smoke, max_rate=max_rate)
            else:
                module = {
                    "ratelimit": ratelimit,
                    "isolation": isolation,
                    "memory": memory,
                    "scaleout": scaleout,
                    "fleet": fleet,
                }[name]
                results[name] = await module.run(smoke)
        except Exception as exc:  # noqa: BLE001 - one failed benchmark must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        timings[name] = round(time.monotonic() - started, 1)
        print(f"[bench] {name} done in {timings[name]} s", flush=True)
    results["timings_s"] = timings
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds-long version with small counts")
    parser.add_argument("--only", nargs="*", default=[], choices=BENCHMARKS, help="run only these")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run of the throughput benchmark")
    parser.add_argument("--out", default=str(OUT / "results.json"), help="where to write the JSON")
    args = parser.parse_args(argv)
    shutil.rmtree(OUT / "work", ignore_errors=True)  # the previous run's daemon logs and ledgers
    started = time.monotonic()
    command = "python bench/run_all.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = asyncio.run(run_all(args.smoke, args.only, not args.no_profile))
    document = {
        "machine": machine_info(),
        "command": command.strip(),
        "smoke": args.smoke,
        "total_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    print()
    print(table(results))
    print(f"\ntotal {document['total_s']} s; wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    failed = [name for name, r in results.items() if isinstance(r, dict) and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
