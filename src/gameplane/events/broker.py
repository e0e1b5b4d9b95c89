"""In-process fan-out of recorded events to live listeners (the SSE stream).

Events are first written to the database (so a listener can resume with
``Last-Event-ID``) and published here only after the transaction commits.
Each listener owns a bounded queue; one that does not keep up is dropped with
an ``overflow`` marker instead of growing memory, and resumes from the
database on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    instance_id: str | None
    owner_id: str | None
    data: dict[str, Any]
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "instanceId": self.instance_id,
                "data": self.data, "createdAt": self.created_at}


class Overflow(Exception):
    """The listener fell too far behind and must resume from the database."""


class Broker:
    def __init__(self, queue_size: int = 1000):
        self._queue_size = queue_size
        self._listeners: set[asyncio.Queue[Event | None]] = set()

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def publish(self, event: Event) -> None:
        for queue in list(self._listeners):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # Make room for the marker; the listener ends and resumes from the database.
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)
                self._listeners.discard(queue)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[Event | None]]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)
