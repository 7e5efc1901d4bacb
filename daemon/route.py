"""The state of one route while the dispatcher works on it, in memory.

A route is a chain of targets (primary, then fallbacks) for one event. :class:`RouteState` says
where in the chain it stands, how many attempts it made there and what happened so far; it is
built from a fresh record of the input topic or from a due record of the retry topic, and turned
into a retry record (:class:`~daemon.retrying.RetryRecord`, the wire format) only when the route
is handed to the retry topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from octopus_crm.core.errors import ErrorInfo
from octopus_crm.daemon.records import InboundRecord
from octopus_crm.daemon.retrying import AttemptRecord, RetryKind, RetryRecord, TargetSpec
from octopus_crm.strategies.routing import Route

__all__ = ["RouteState"]

# The wire form of a route's chain, by the route: a kept plan (strategies.routing) hands the
# same routes to every event of its tenant and category. The entry holds the route, so the id
# stays its own.
_CHAINS: dict[int, tuple[Route, tuple[TargetSpec, ...]]] = {}
_MAX_CHAINS = 1024


def _chain(route: Route) -> tuple[TargetSpec, ...]:
    found = _CHAINS.get(id(route))
    if found is not None and found[0] is route:
        return found[1]
    chain = tuple(TargetSpec.of(t) for t in route.chain)
    if len(_CHAINS) >= _MAX_CHAINS:  # routes planned per event come and go: bounded, cleared when full
        _CHAINS.clear()
    _CHAINS[id(route)] = (route, chain)
    return chain


@dataclass
class RouteState:
    """One route of one event: its chain, its place in it, its history.

    ``purpose`` is ``sync_back`` for the delivery to a recovered primary after a fallback (it
    keeps that purpose whenever it waits); ``fresh`` says the event came from the input topic in
    this pass (a duplicate of it is reported, a fresh delivery may be handed off as backlog).
    """

    event_id: str
    source: InboundRecord
    received_at: float
    strategy: str
    chain: tuple[TargetSpec, ...]
    fresh: bool = True
    purpose: Literal["deliver", "sync_back"] = "deliver"
    index: int = 0
    attempt: int = 0
    history: list[AttemptRecord] = field(default_factory=list)
    first_error: ErrorInfo | None = None
    sync_back: bool = False
    sync_back_from: str | None = None

    @classmethod
    def fresh_route(
        cls, event_id: str, record: InboundRecord, received_at: float, strategy: str, route: Route
    ) -> RouteState:
        """A route of an event just consumed from the input topic."""
        state = cls(event_id, record, received_at, strategy, _chain(route))
        if route.sync_back:
            state.sync_back = True
        return state

    @classmethod
    def from_retry(cls, retry: RetryRecord) -> RouteState:
        """A route resumed from a due record of the retry topic."""
        return cls(
            event_id=retry.event_id,
            source=retry.original(),
            received_at=retry.received_at,
            strategy=retry.strategy,
            chain=tuple(retry.chain),
            fresh=False,
            purpose="sync_back" if retry.kind == "sync_back" else "deliver",
            index=retry.index,
            attempt=retry.attempt,
            history=list(retry.history),
            first_error=ErrorInfo.from_dict(retry.first_error) if retry.first_error else None,
            sync_back=retry.sync_back,
            sync_back_from=retry.sync_back_from,
        )

    @property
    def target(self) -> TargetSpec:
        return self.chain[self.index]

    @property
    def is_sync_back(self) -> bool:
        return self.purpose == "sync_back"

    @property
    def has_next(self) -> bool:
        return self.index + 1 < len(self.chain)

    def note(self, error: ErrorInfo) -> None:
        """The first error of the route is what a fallback result and a dead letter report."""
        if self.first_error is None:
            self.first_error = error

    def next_target(self) -> None:
        self.index += 1
        self.attempt = 0

    def to_retry(self, kind: RetryKind, due: float) -> RetryRecord:
        """The wire record that hands this route to the retry topic, due at ``due``."""
        return RetryRecord(
            kind="sync_back" if self.is_sync_back else kind,
            event_id=self.event_id,
            key=RetryRecord.key_b64(self.source.key),
            value=self.source.value.decode() if self.source.value else "",
            headers=RetryRecord.headers_b64(self.source.headers),
            source_topic=self.source.topic,
            source_partition=self.source.partition,
            source_offset=self.source.offset,
            received_at=self.received_at,
            strategy=self.strategy,
            chain=list(self.chain),
            index=self.index,
            attempt=self.attempt,
            due=due,
            history=list(self.history),
            first_error=self.first_error.as_dict() if self.first_error else None,
            sync_back=self.sync_back,
            sync_back_from=self.sync_back_from,
        )
