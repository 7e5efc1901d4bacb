"""The inbound record as the daemon sees it, independent of the Kafka client."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InboundRecord"]


@dataclass(frozen=True, slots=True)
class InboundRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None
    received_at: float = field(default=0.0, compare=False)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None
