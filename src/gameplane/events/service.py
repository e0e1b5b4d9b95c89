"""Recording events: written in their own transaction, published to live
listeners only after commit (zulip's ``send_event_on_commit``), readable
again from the database by id for ``Last-Event-ID`` resumption."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gameplane.db.engine import transaction
from gameplane.db.models import Event as EventRow
from gameplane.db.models import Instance
from gameplane.events.broker import Broker, Event


def _to_event(row: EventRow, owner_id: str | None) -> Event:
    return Event(row.id, row.kind, row.instance_id, owner_id, row.data,
                 row.created_at.isoformat().replace("+00:00", "Z"))


class EventLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], broker: Broker):
        self.sessions = sessions
        self.broker = broker

    async def record(self, kind: str, instance_id: str | None, owner_id: str | None,
                     data: dict[str, Any]) -> Event:
        async with transaction(self.sessions) as session:
            row = EventRow(kind=kind, instance_id=instance_id, data=data)
            session.add(row)
            await session.flush()
            event = _to_event(row, owner_id)
        self.broker.publish(event)
        return event

    async def since(self, after_id: int, owner_id: str | None, limit: int = 1000) -> list[Event]:
        """Events after ``after_id``, of ``owner_id``'s instances (all when None)."""
        query = (select(EventRow, Instance.owner_id)
                 .outerjoin(Instance, Instance.id == EventRow.instance_id)
                 .where(EventRow.id > after_id).order_by(EventRow.id).limit(limit))
        if owner_id is not None:
            query = query.where(Instance.owner_id == owner_id)
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [_to_event(row, owner) for row, owner in rows]
