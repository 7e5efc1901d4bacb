"""``octopus-crm dev``: the daemon on this machine against the embedded broker and the vendor
fakes, until Ctrl-C. Produce events to it with ``octopus-crm produce``; watch its log, /metrics
and the admin API."""

from __future__ import annotations

from pathlib import Path

from octopus_crm.daemon.app import Daemon, install_signal_handlers
from octopus_crm.daemon.logs import configure_logging
from octopus_crm_sandbox.local_stack import EXAMPLES, local_stack

__all__ = ["run_dev"]


async def run_dev(
    *, config_path: str | None = None, metrics_port: int = 9464, broker_port: int | None = None, group_id: str
) -> int:
    config_file = Path(config_path) if config_path else EXAMPLES / "crm-config.seed.json"
    print(f"octopus-crm dev: starting the embedded broker and the vendor fakes for {config_file}", flush=True)
    async with local_stack(config_file, broker_port=broker_port, metrics_port=metrics_port, group_id=group_id) as stack:
        settings = stack.settings
        configure_logging(settings.log_format, settings.log_level)
        print(f"embedded broker at {settings.bootstrap_servers} (idempotent producers off: Tansu has none)")
        for name, fake in sorted(stack.sandbox.fakes.items()):
            print(f"  fake {name:<10} {fake.base_url}")
        print(f"metrics, /healthz, /readyz and the admin API at http://127.0.0.1:{settings.metrics_port}")
        print(
            "produce the sample events with:\n"
            f"  octopus-crm produce {EXAMPLES / 'events.sample.jsonl'} "
            f"--bootstrap-servers {settings.bootstrap_servers} --no-idempotence\n"
            f"results: topic {settings.results_topic}, dead letters: {settings.dlq_topic}. Ctrl-C stops everything.",
            flush=True,
        )
        daemon = Daemon(settings, stack.config)
        install_signal_handlers(daemon)
        await daemon.run()
    return 0
