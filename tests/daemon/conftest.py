"""Fixtures shared by the daemon's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from octopus_crm.daemon.partitioner import partition
from octopus_crm.daemon.reporting import Reporter
from tests.kafka import TestBroker


async def started_producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", partitioner=partition, **options)
    await producer.start()
    return producer


@pytest.fixture
async def reporter(broker: TestBroker, topics: Any) -> AsyncIterator[Reporter]:
    """A reporter on the test's topics (created), with the daemon's partitioner."""
    await broker.create(topics)
    producer = await started_producer(broker.bootstrap)
    try:
        yield Reporter(producer, results_topic=topics.results, dlq_topic=topics.dlq, retry_topic=topics.retry)
    finally:
        await producer.stop()
