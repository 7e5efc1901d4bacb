"""Metrics, health endpoints and secret hygiene of the real daemon process."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from octopus_crm.daemon.consumer import Health
from octopus_crm_sandbox.kit import FakeVendor, SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import keyed, make_event, webhook_config
from tests.process import DaemonProcess, wait_until

CANARIES = {
    "token": "CANARY-bearer-7f3a9c1e55",
    "header": "CANARY-header-0b7d2e8a44",
    "query": "CANARY-query-93c1d0f2aa",
}


class EchoingVendor(FakeVendor):
    """A careless vendor: its error pages echo the request's credentials back."""

    name = "echo"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{tail:.*}", self.fail)]

    async def fail(self, request: web.Request) -> web.Response:
        status = 401 if "unauthorized" in request.path else 500
        auth, key = request.headers.get("Authorization"), request.headers.get("X-Api-Key")
        body = f"bad request: auth={auth} key={key} url={request.url}"
        return web.Response(status=status, text=body)


@pytest.mark.slow
async def test_metrics_health_and_no_secret_in_logs(broker: Any, topics: Any, tmp_path: Path) -> None:
    await broker.create(topics, partitions=2)
    hook, echo = WebhookFake(), EchoingVendor()
    hook.name = "hook"
    async with SandboxServer(hook, echo):
        config = webhook_config(
            {
                "good": f"{hook.base_url}/hooks/a",
                "denied": f"{echo.base_url}/unauthorized?access_token={CANARIES['query']}",
                "broken": f"{echo.base_url}/broken?access_token={CANARIES['query']}",
            },
            credentials={"token": CANARIES["token"]},
            headers={"X-Api-Key": CANARIES["header"]},
            retry={"maxAttempts": 2, "initialDelay": 0.05},
        )
        events = [make_event(i, key=f"k{i % 3}") for i in range(20)]
        await broker.produce(topics.input, [*keyed(events), (b"k", b"{broken json")])
        daemon = DaemonProcess(broker, topics, config, tmp_path, "obs", log_level="DEBUG").start()
        try:
            await wait_until(lambda: daemon.get("/readyz")[0] == 200, 60)
            results = await broker.read(topics.results, expect=60, timeout=60)
            await broker.read(topics.dlq, expect=1, timeout=30)
            await asyncio.sleep(0.5)
            status, body = daemon.get("/metrics")
            health = daemon.get("/healthz")
            supported = orjson.loads(daemon.get("/api/crm/supported")[1])
            listed = daemon.get("/api/crm/integrations")[1]
            code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert code == 0
    assert {orjson.loads(r.value)["status"] for r in results} == {"succeeded", "failed"}
    assert status == 200 and health[0] == 200
    assert any(row["type"] == "webhook" for row in supported)

    text = body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "octopus_crm_events_consumed",
        "octopus_crm_outcomes",
        "octopus_crm_delivery_duration_seconds",
        "octopus_crm_in_flight_events",
        "octopus_crm_dlq_records",
        "octopus_crm_commit_duration_seconds",
    ):
        assert name in families, name
    dlq = [s for s in families["octopus_crm_dlq_records"].samples if s.name.endswith("_total")]
    assert any(s.labels["error_class"] == "invalid_json" and s.value == 1 for s in dlq)
    promtool = shutil.which("promtool")
    if promtool:
        check = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()

    logs = daemon.log()
    assert "event processed" in logs and "eventId" in logs
    for canary in CANARIES.values():
        assert canary not in logs, f"secret {canary} leaked into the log"
        assert canary.encode() not in listed
        for r in results:
            assert canary.encode() not in r.value


def test_health_reports_a_stuck_consumer() -> None:
    health = Health(stall_timeout=5)
    health.running, health.joined = True, True
    health.broker_answered()
    health.reachable_since = time.monotonic() - 60  # the broker answers, and has for a minute
    assert health.alive()[0] and health.ready()[0]
    health.lag_sampled(10)
    health.last_progress = time.monotonic() - 6
    ok, reason = health.alive()
    assert not ok and "stuck" in reason
    health.progress()
    assert health.alive()[0]
    health.lag = 0
    health.last_progress = time.monotonic() - 600
    assert health.alive()[0], "an idle consumer with no lag is healthy"


def test_the_canonical_line_is_the_line_structlog_renders(capsys: Any) -> None:
    """The per-event line skips structlog's chain but not its content: same keys in the same
    order, secret-named keys masked, registered secrets scrubbed."""
    import orjson
    import structlog

    from octopus_crm.core.redaction import register_secret
    from octopus_crm.daemon.logs import _Canonical, canonical, configure_logging

    secret = f"s3cret-{time.time_ns()}"
    register_secret(secret)
    configure_logging("json", "INFO")
    try:
        structlog.contextvars.bind_contextvars(topic="in", partition=1, offset=7, eventId="e1", tenantId="t1")
        fields = {"strategy": "s", "outcomes": [{"status": "failed", "detail": f"bad {secret}"}], "token": "x"}
        canonical("event processed", **fields)
        structlog.get_logger("octopus.processing").info("event processed", **fields)
        with structlog.testing.capture_logs() as captured:  # a capturing test gets the structlog path
            canonical("event processed", strategy="s")
    finally:
        structlog.contextvars.clear_contextvars()
        _Canonical.install(None)
        structlog.reset_defaults()
    fast, slow = (orjson.loads(line) for line in capsys.readouterr().err.splitlines()[-2:])
    assert secret not in str(fast) and fast["token"] == "[REDACTED]"
    fast.pop("timestamp"), slow.pop("timestamp")
    assert list(fast.items()) == list(slow.items())
    assert captured == [{"strategy": "s", "event": "event processed", "log_level": "info"}]


def test_the_canonical_line_follows_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging configured while another stream was stderr (an earlier test's capture, since closed)
    must not fail the events processed later."""
    import io

    import structlog

    from octopus_crm.daemon.logs import _Canonical, canonical, configure_logging

    old, new = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", old)
    configure_logging("json", "INFO")
    try:
        old.close()
        monkeypatch.setattr(sys, "stderr", new)
        canonical("event processed", strategy="s")
        structlog.get_logger("octopus.test").info("another line")
    finally:
        _Canonical.install(None)
        structlog.reset_defaults()
    assert '"event":"event processed"' in new.getvalue() and '"event":"another line"' in new.getvalue()


def test_the_outcomes_line_is_the_line_structlog_renders(capsys: Any) -> None:
    """``log_outcomes`` scrubs only what came from outside (a vendor's values, the customer's ids)
    before the fast path; its line has the content of the whole-line-scrubbed structlog one."""
    import structlog

    from octopus_crm.core.contracts import ResultError, ResultSource, SyncResult
    from octopus_crm.core.redaction import register_secret
    from octopus_crm.daemon.logs import _Canonical, configure_logging
    from octopus_crm.daemon.outcomes import Outcomes
    from octopus_crm.daemon.reporting import log_outcomes

    secret = f"s3cret-{time.time_ns()}"
    register_secret(secret)

    def result(status: str, **vendor: Any) -> SyncResult:
        source = ResultSource(topic="in", partition=1, offset=7)
        return SyncResult(
            eventId="e1", messageId="m1", tenantId="t1", integrationId="hook", integrationType="webhook",
            objectType="message", strategy="s", status=status, source=source, **vendor,
        )  # fmt: skip

    events = [
        ("e1", [result("succeeded", externalId="wh_1")]),
        (f"e-token={secret}", [result("succeeded", externalId=f"x-{secret}")]),
        (
            "e3",
            [
                result(
                    "failed",
                    error=ResultError(error_class="permanent", code=f"http_400 {secret}", message="m"),
                    detail={"invalid": [f"u {secret}"], "api_token": "t", f"k{secret}": "https://u:p@h/x?sig=1"},
                ),
                result("skipped"),
            ],
        ),
    ]
    configure_logging("json", "INFO")
    try:
        for event_id, results in events:
            structlog.contextvars.bind_contextvars(topic="in", partition=1, offset=7, eventId=event_id, tenantId="t1")
            wire = [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in results]
            log_outcomes("event processed", "s", Outcomes(results=wire), time.monotonic())  # type: ignore[arg-type]
            structlog.get_logger("octopus.processing").info(
                "event processed",
                strategy="s",
                outcomes=[
                    {
                        "integration": r.integrationId,
                        "object": r.objectType,
                        "status": r.status,
                        **({"externalId": r.externalId} if r.externalId else {}),
                        **({"error": r.error.code} if r.error else {}),
                        **({"detail": r.detail} if r.detail else {}),
                    }
                    for r in results
                ],
                scheduled=[],
                latency_ms=0.0,
            )
    finally:
        structlog.contextvars.clear_contextvars()
        _Canonical.install(None)
        structlog.reset_defaults()
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2 * len(events)
    for fast, slow in zip(lines[::2], lines[1::2], strict=True):
        assert secret not in orjson.dumps(fast).decode()
        assert fast["timestamp"].endswith("Z") and len(fast["timestamp"]) in (20, 27)
        for line in (fast, slow):
            line.pop("timestamp"), line.pop("latency_ms")
        assert fast == slow


async def test_canonical_lines_are_written_once_per_loop_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines logged in one loop iteration reach the stream together, after it; another log line
    writes those before it first, and uninstalling (as at exit) writes what is left."""
    import io

    import structlog

    from octopus_crm.daemon.logs import _Canonical, canonical, configure_logging

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json", "INFO")
    try:
        canonical("first", n=1)
        canonical("second", n=2)
        assert stream.getvalue() == ""
        await asyncio.sleep(0)
        assert [orjson.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["first", "second"]
        canonical("third", n=3)
        structlog.get_logger("octopus.test").warning("another line")
        canonical("fourth", n=4)
    finally:
        _Canonical.install(None)
        structlog.reset_defaults()
    events = [orjson.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["first", "second", "third", "another line", "fourth"]
