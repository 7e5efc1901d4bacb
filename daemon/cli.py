"""``octopus-crm``: run the daemon, validate a configuration, list adapters, produce events, demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

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


def _settings(args: argparse.Namespace) -> Any:
    from daemon.settings import Settings

    overrides = {
        field: getattr(args, field) for _, field, _, _ in _SETTING_FLAGS if getattr(args, field, None) is not None
    }
    if getattr(args, "no_idempotence", False):
        overrides["producer_idempotence"] = False
    if getattr(args, "create_topics", False):
        overrides["create_topics"] = True
    return Settings(**overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import run_daemon
    from daemon.config import ConfigFileError
    from daemon.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(run_daemon(settings))
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import os

    from daemon.config import ConfigFileError, load_config

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

    from adapters.registry import describe

    table = describe()
    if args.json:
        print(orjson.dumps(table, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{'type':<12} {'name':<22} {'objects':<32} {'auth':<34} idempotency")
    for row in table:
        name = f"{row['name']} / {row['nameZh']}" if row["nameZh"] != row["name"] else row["name"]
        print(
            f"{row['type']:<12} {name:<22} {', '.join(row['objectTypes']):<32} "
            f"{', '.join(row['authTypes']):<34} {row['idempotency']}"
        )
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from daemon.producing import produce_file

    settings = _settings(args)
    count = asyncio.run(produce_file(settings, args.file, topic=args.topic or settings.input_topic, key_field=args.key))
    print(f"produced {count} records to {args.topic or settings.input_topic}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    return asyncio.run(run_demo(config_path=args.config, events_path=args.events, verbose=args.verbose))


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from adapters.sandbox.runner import run_sandbox

    return asyncio.run(run_sandbox(args.types or None, base_port=args.base_port))


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    from daemon.dlq import REPLAYABLE_BY_DEFAULT, ReplayFilter, replay_dlq

    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    selection = ReplayFilter(
        integrations=frozenset(args.integration or ()),
        error_classes=frozenset(args.error_class or REPLAYABLE_BY_DEFAULT),
        since=when(args.since),
        until=when(args.until),
    )
    report = asyncio.run(
        replay_dlq(
            _settings(args),
            selection,
            rate=args.rate,
            limit=args.limit,
            dry_run=args.dry_run,
            from_beginning=args.from_beginning,
        )
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
    parser = argparse.ArgumentParser(
        prog="octopus-crm", description="Deliver AI-classified customer messages from Kafka to CRMs."
    )
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
        help="only this class (repeatable; 'all' for every class; default: delivery_failed, internal_error)",
    )
    replay.add_argument("--since", help="dead-lettered at or after (ISO 8601)")
    replay.add_argument("--until", help="dead-lettered at or before (ISO 8601)")
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
    sandbox.add_argument("types", nargs="*", help="only these target types")
    sandbox.add_argument("--base-port", type=int, default=0, help="first port (default: free ports)")
    sandbox.set_defaults(func=_cmd_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or sys.argv[1:])])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
