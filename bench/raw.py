"""The raw baseline: a minimal hand-written consume → POST → produce → commit loop, no features.

No decoding beyond ``orjson.loads``, no validation, routing, templates, ledger, ordering, retries,
metrics or logs. The consumer is assigned every partition directly (no group membership, only the
group's offsets for commits); each fetched batch is POSTed with ``aiohttp`` (the fastest client in
``bench/http_clients.py``) at bounded concurrency, one small result per record is produced and
acknowledged, then the batch's offsets are committed. This is the ceiling the daemon is compared
with: the same broker, the same fake, the same events.

``python -m bench.raw --bootstrap H:P --topic IN --results OUT --group G --url URL``; runs until
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = ["run"]


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=False, linger_ms=5)
    await consumer.start()
    await producer.start()
    consumer.assign([TopicPartition(args.topic, p) for p in range(args.partitions)])
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
    slots = asyncio.Semaphore(args.concurrency)

    async def one(record: Any) -> None:
        event = orjson.loads(record.value)
        body = orjson.dumps(
            {
                "eventId": event["eventId"],
                "key": event["metadata"]["conv"],
                "seq": event["metadata"]["seq"],
                "text": event["content"],
            }
        )
        async with (
            slots,
            session.post(
                args.url,
                data=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": event["eventId"]},
            ) as resp,
        ):
            answer = orjson.loads(await resp.read())
        result = orjson.dumps({"eventId": event["eventId"], "status": "succeeded", "externalId": answer["id"]})
        await (await producer.send(args.results, key=event["eventId"].encode(), value=result))

    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                continue
            await asyncio.gather(*(one(r) for records in batch.values() for r in records))
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
    finally:
        await session.close()
        await producer.stop()
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=500)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
