"""The printed table: one row per figure, with its baseline and its target."""

from __future__ import annotations

from typing import Any

__all__ = ["rows", "table"]


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ok(flag: Any) -> str:
    return "yes" if flag else "NO"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, measured, baseline, target met?) for every figure present."""
    out: list[tuple[str, str, str, str, str]] = []
    if (r := results.get("throughput")) and "error" not in r:
        d, raw = r["daemon"], r["raw"]
        out.append(("1 throughput", "events/s end to end (daemon)", _f(d["rate"]), f"raw loop {_f(raw['rate'])}", ""))
        spread = r.get("ratio_range")
        rounds = (
            f"{r.get('rounds', 1)} rounds {spread[0]:.3f}–{spread[1]:.3f}"
            if spread and len(r.get("runs", [])) > 1
            else "1.0"
        )
        out.append(
            ("", "ratio daemon / raw (mean of rounds)", _f(r["ratio"], 3), rounds, f"≥ 0.8: {_ok(r['ratio'] >= 0.8)}")
        )
        out.append(("", "CPU µs per event", _f(d["cpu_us_per_event"]), f"raw {_f(raw['cpu_us_per_event'])}", ""))
    if (r := results.get("ratelimit")) and "error" not in r:
        for limit in r["limits"].values():
            out.append(
                (
                    "2 rate limit",
                    f"{limit['limit']}: achieved/s over {r['window_s']} s",
                    f"{_f(limit['achieved_rate'], 2)} ({limit['achieved_pct']}%)",
                    f"limit {_f(limit['limit_rate'], 1)}",
                    f"≥ 95%: {_ok(limit['achieved_pct'] >= 95)}",
                )
            )
            rejected = limit["rejected_429_total"]
            out.append(("", f"{limit['limit']}: 429s", _f(rejected), "0", f"0: {_ok(rejected == 0)}"))
    if (r := results.get("isolation")) and "error" not in r:
        out.append(
            (
                "3 isolation",
                "fast integration events/s, slow one beside it",
                _f(r["mixed"]["fast_rate"]),
                f"solo {_f(r['solo']['fast_rate'])}",
                f"≥ 90%: {_ok(r['meets_target'])} ({r['kept_pct']}%)",
            )
        )
        if len(r.get("runs", [])) > 1:
            rounds = " / ".join(f"{k}%" for k in r["kept_pct_rounds"])
            out.append(("", f"mixed/solo per round (median of {len(r['runs'])})", rounds, "", ""))
        if "control" in r:
            out.append(
                (
                    "",
                    "same, neighbour answering at once (control)",
                    _f(r["control"]["fast_rate"]),
                    f"mixed/control {r['kept_vs_control_pct']}%",
                    "latency effect alone",
                )
            )
        if "paced_mixed" in r:
            out.append(
                (
                    "",
                    "fast paced at a vendor limit, slow one beside it",
                    _f(r["paced_mixed"]["fast_rate"]),
                    f"paced solo {_f(r['paced_solo']['fast_rate'])}",
                    f"≥ 90%: {_ok((r['paced_kept_pct'] or 0) >= 90)} ({r['paced_kept_pct']}%)",
                )
            )
    if (r := results.get("latency")) and "error" not in r:
        d, raw = r["daemon"]["to_result_ms"], r["raw"]["to_result_ms"]
        out.append(
            (
                "4 latency",
                f"added p50 / p99 ms at {_f(r['daemon']['offered_rate'], 0)} ev/s",
                f"{_f(d['p50'])} / {_f(d['p99'])}",
                f"raw {_f(raw['p50'])} / {_f(raw['p99'])}",
                f"p99 ≤ 20: {_ok(r['meets_target'])}",
            )
        )
        if "daemon_default_fetch_wait" in r:
            dd = r["daemon_default_fetch_wait"]["to_result_ms"]
            out.append(("", "same, broker fetch wait 500 ms (default)", f"{_f(dd['p50'])} / {_f(dd['p99'])}", "", ""))
    if (r := results.get("memory")) and "error" not in r:
        out.append(
            (
                "5 memory",
                f"max RSS MB, {r['events']:,}-event backlog",
                _f(r["rss_max_mb"]),
                f"idle {_f(r['rss_idle_mb'])}",
                f"≤ 300: {_ok(r['meets_target'])}",
            )
        )
        out.append(("", "RSS slope, 2nd half (MB/min)", _f(r["slope_second_half_mb_per_min"], 2), "0", ""))
    if (r := results.get("scaleout")) and "error" not in r:
        out.append(
            (
                "6 scale-out",
                "events/s, 2 processes",
                _f(r["two"]["rate"]),
                f"1 process {_f(r['one']['rate'])}",
                f"ratio {_f(r['ratio'], 2)}",
            )
        )
    if (r := results.get("fleet")) and "error" not in r:
        for limit in r["steady"].values():
            out.append(
                (
                    "7 fleet",
                    f"{limit['limit']}: {r['replicas']} processes together, /s over {r['window_s']} s",
                    f"{_f(limit['achieved_rate'], 2)} ({limit['achieved_pct']}%)",
                    f"limit {_f(limit['limit_rate'], 1)}",
                    f"≥ 95%: {_ok(limit['achieved_pct'] >= 95)}",
                )
            )
        for name, rejected in r["rejected_429_excluding_injected"].items():
            out.append(("", f"{name}: 429s (whole run, injected one excluded)", _f(rejected), "0", _ok(rejected == 0)))
        ra = r["retry_after"]
        out.append(
            (
                "",
                f"requests in the {ra['retry_after_s']} s after one 429 Retry-After",
                _f(ra["requests_in_pause"]),
                "0",
                f"0: {_ok(ra['met'])}",
            )
        )
        for name, killed in r["redis_killed"].items():
            if isinstance(killed, dict):
                out.append(
                    (
                        "",
                        f"{name}: fleet Redis killed, /s over {r['redis_killed']['window_s']} s",
                        f"{_f(killed['achieved_rate'], 2)} ({killed['achieved_pct']}%)",
                        f"429s {_f(killed['rejected_429_since_kill'])}",
                        "limit ÷ 3 each",
                    )
                )
        acc = r["accounting"]
        out.append(
            (
                "",
                "deliveries = delivered results, no DLQ",
                f"{acc['fake_deliveries']} / {acc['events_with_a_delivered_result']}",
                f"DLQ {acc['dead_letters']}",
                _ok(acc["nothing_lost_or_doubled"]),
            )
        )
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            out.append((name, "FAILED", r["error"][:60], "", ""))
    return out


def table(results: dict[str, Any]) -> str:
    header = ("benchmark", "figure", "measured", "baseline", "target")
    body = rows(results)
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(5)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)
