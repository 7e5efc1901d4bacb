"""Creating the daemon's topics where a cluster does not create them itself (``CREATE_TOPICS``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

__all__ = ["create_topics"]


async def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4, **kafka: object) -> None:
    """Create topics that do not exist yet (idempotent)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        for _ in range(50):
            if set(topics) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
