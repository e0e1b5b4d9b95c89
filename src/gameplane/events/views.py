"""``GET /api/events``: state changes as server-sent events.

The stream first replays recorded events after ``Last-Event-ID`` (or
``?after=``), then goes live. A listener too slow for the live queue is
closed with an ``overflow`` event and resumes from the database when it
reconnects, so it never misses an event silently.

Authentication: the usual bearer header, or ``?access_token=`` because a
browser ``EventSource`` cannot send headers (see ``gameplane.auth.principal``).
The token is checked when the stream opens; a stream outlives the token's 15
minutes, so a client reconnects with a fresh one after a logout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from gameplane.auth.principal import Principal, stream_principal
from gameplane.errors import BadRequest
from gameplane.events.broker import Event
from gameplane.events.service import EventLog

router = APIRouter()
KEEPALIVE_SECONDS = 15.0


def _sse(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(event.to_json())}\n\n"


@router.get("/api/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request, caller: Annotated[Principal, Depends(stream_principal)],
                 after: int | None = None) -> StreamingResponse:
    log: EventLog = request.app.state.events
    last = request.headers.get("last-event-id")
    try:
        start = int(last) if last is not None else (after if after is not None else -1)
    except ValueError as exc:
        raise BadRequest("invalid_last_event_id", {"value": last}) from exc
    owner = None if caller.is_admin else caller.user_id

    async def stream() -> AsyncIterator[str]:
        cursor = start
        async with log.broker.listen() as queue:
            # Subscribe first, then replay: an event committed in between is in both
            # and is skipped by id, never lost.
            if cursor >= 0:
                for event in await log.since(cursor, owner):
                    cursor = event.id
                    yield _sse(event)
            else:
                yield ": live\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is None:
                    yield "event: overflow\ndata: {}\n\n"
                    return
                if item.id <= cursor or (owner is not None and item.owner_id != owner):
                    continue
                cursor = item.id
                yield _sse(item)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
