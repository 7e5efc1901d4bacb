"""The CLI commands of the dev tools: ``octopus-crm demo``, ``dev`` and ``sandbox``.

octopus-crm-sandbox registers them under the ``octopus_crm.commands`` entry points
(sandbox/pyproject.toml); the daemon's CLI finds them there, so it never imports this package.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from octopus_crm.daemon.cli import check_config_file, settings_from_args
from octopus_crm.daemon.operator_errors import OperatorError

__all__ = ["demo", "dev", "sandbox"]


def demo(args: argparse.Namespace) -> int:
    from octopus_crm_sandbox.demo import run_demo

    settings_from_args(args)  # OCTOPUS_CRM_* variables apply to the demo's daemon too
    check_config_file(args.config)
    if args.events is not None and not Path(args.events).is_file():
        raise OperatorError(f"--events: no such file {args.events}")
    return asyncio.run(run_demo(config_path=args.config, events_path=args.events, verbose=args.verbose))


def dev(args: argparse.Namespace) -> int:
    from octopus_crm_sandbox.dev import run_dev

    settings_from_args(args)  # OCTOPUS_CRM_* variables apply to the dev daemon too
    check_config_file(args.config)
    return asyncio.run(
        run_dev(
            config_path=args.config,
            metrics_port=args.metrics_port,
            broker_port=args.broker_port,
            group_id=args.group_id,
        )
    )


def sandbox(args: argparse.Namespace) -> int:
    from octopus_crm_sandbox.local_stack import EXAMPLES
    from octopus_crm_sandbox.registry import FAKES
    from octopus_crm_sandbox.runner import run_sandbox, unknown_types

    unknown = unknown_types(args.types)
    if unknown:
        raise OperatorError(f"unknown target type {', '.join(map(repr, unknown))}; valid: {', '.join(FAKES)}")
    check_config_file(args.config)
    config = args.config or str(EXAMPLES / "crm-config.seed.json")
    return asyncio.run(
        run_sandbox(args.types or None, base_port=args.base_port, config_path=config, write_overlay=args.write_overlay)
    )
