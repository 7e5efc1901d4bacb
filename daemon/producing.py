"""``octopus-crm produce``: send JSONL events to a topic, keyed as upstream keys them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from octopus_crm.daemon.partitioner import partition
from octopus_crm.daemon.settings import Settings

__all__ = ["event_key", "produce_lines"]


def event_key(line: bytes, key_fields: str) -> bytes | None:
    """``tenantId:sender.id`` → b"t-acme:u-0"; None when the line is not a JSON object."""
    try:
        event: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    parts = []
    for path in key_fields.split(":"):
        node: Any = event
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        parts.append("" if node is None else str(node))
    return ":".join(parts).encode()


async def produce_lines(settings: Settings, lines: list[bytes], *, topic: str, key_field: str) -> int:
    producer = await _started_producer(settings, patience_s=5.0)
    try:
        futures = [await producer.send(topic, value=line, key=event_key(line, key_field)) for line in lines]
        for future in futures:
            await future
    finally:
        await producer.stop()
    return len(lines)


async def _started_producer(settings: Settings, *, patience_s: float) -> AIOKafkaProducer:
    """A started producer, trying again for a few seconds: a broker that is starting or busy
    refuses a first connection now and then, which is no reason to call it unreachable."""
    deadline = time.monotonic() + patience_s
    while True:
        producer = AIOKafkaProducer(
            **settings.kafka_common(),
            acks="all",
            enable_idempotence=settings.producer_idempotence,
            max_request_size=settings.max_request_size,
            partitioner=partition,
        )
        try:
            await producer.start()
            return producer
        except KafkaConnectionError:
            await producer.stop()
            if time.monotonic() >= deadline:
                raise
        except BaseException:
            await producer.stop()
            raise
        await asyncio.sleep(0.5)
