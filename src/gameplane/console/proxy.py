"""One browser's console connection, proxied to the agent's console websocket.

Four tasks share the connection; the first to end ends it:

- **upstream** reads the agent's ``/console/ws?batch=1[&since=N]`` (batch
  frames are ten times cheaper than per-line ones, see bench/README.md) into
  a bounded queue, remembering the last sequence number it read (a line or a
  gap's end). When the agent's websocket drops (agent restart, node agent
  killed), it reconnects with ``since=<that number>`` for up to
  ``console_upstream_retry`` seconds, so the browser sees no loss and no
  repeat — a line the agent no longer holds arrives as the agent's ``gap``
  frame. Lines at or below the cursor are dropped, should an agent repeat one.
- **downstream** writes the queue to the browser: batch frames as the agent
  sent them (``?batch=1``; the ones a slow browser left queued merged into
  one), else one ``{"type":"output","seq","line"}`` frame per line.
  Backpressure: the queue holds ``console_queue_frames`` frames; when a slow
  browser lets it fill, upstream stops reading, TCP pushes back on the
  agent, the agent's cursor for this connection falls behind its ring
  buffer, and the agent sends a ``gap`` frame when it catches up. The API
  holds at most the queue, whatever the browser does.
- **client** reads the browser's frames: ``{"type":"command","command"}``
  is forwarded to the agent (which answers ``ack`` or ``error`` in the
  stream) if the connection's token bucket allows, else answered
  ``{"type":"throttled","retryAfter":s}``; ``{"type":"reauth","ticket"}``
  extends the connection with a fresh ticket. Frames over 8 KiB, binary
  frames, bad JSON and unknown types get an ``error`` frame; the
  connection stays up.
- **watch** re-checks the grant every ``console_check_interval`` seconds
  (session or API key alive, server still there, the user's, ``active``),
  sends ``{"type":"token_expiring","expiresAt"}`` ``console_expiry_warning``
  seconds before the access token behind the ticket expires, and ends the
  connection at that moment unless a ``reauth`` moved it.

A connection ends with an ``error`` frame carrying the envelope
(``{"type":"error","error","details"}``) and the close code 4000 + the
error's HTTP status: 4401 (``session_ended``, ``api_key_revoked``,
``token_expired``), 4404 (the server is gone or not the user's), 4409 (the
server is not active: ``instance_suspended``, ``instance_deleting``, …), 4502
(``agent_unreachable``: the agent stayed away). After any of them the client
reconnects with a new ticket and ``since=<last seq>`` and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gameplane.agents.client import AgentBadResponse, AgentEndpoint, AgentUnreachable
from gameplane.console import frames
from gameplane.console.bucket import TokenBucket
from gameplane.console.service import ConsoleService
from gameplane.console.tickets import Grant
from gameplane.errors import BadRequest, GameplaneError, Unauthorized
from gameplane.instances.service import iso

log = logging.getLogger(__name__)

#: the largest frame a browser may send (a command is at most 4096 characters)
MAX_CLIENT_FRAME = 8192
#: agent frames: up to 256 lines of up to 16 KiB, JSON-escaped
_MAX_AGENT_FRAME = 32 * 1024 * 1024
_OUTPUT_PREFIX = '{"type":"output","seq":'
#: batch frames waiting for a slow browser are merged up to about this size
_MERGE_BYTES = 256 * 1024
#: seconds one attempt to open the agent's websocket may take
_HANDSHAKE = 5.0
#: a silent agent is pinged this often; no pong within half of it drops the connection
_HEARTBEAT = 30.0


@dataclass(frozen=True, slots=True)
class _Item:
    """One queued agent frame: ``text`` as the agent sent it (``None`` when lines
    were trimmed), and for output frames the first sequence number and the lines."""

    text: str | None
    first: int = 0
    lines: list[str] | None = None
    #: an agent batch frame passed through unparsed (may be merged with the next ones)
    batch: bool = False


async def close_with(websocket: WebSocket, error: GameplaneError) -> None:
    """Send ``error`` as a frame and close with 4000 + its HTTP status."""
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        if websocket.application_state is WebSocketState.CONNECTED:
            await websocket.send_text(frames.error(error.code, error.details))
            await websocket.close(code=4000 + error.status, reason=error.code[:120])


class ConsoleProxy:
    def __init__(self, websocket: WebSocket, service: ConsoleService, grant: Grant, endpoint: AgentEndpoint,
                 since: int | None, batch: bool):
        settings = service.settings
        self.websocket = websocket
        self.service = service
        self.grant = grant
        self.endpoint = endpoint
        self.batch = batch
        #: the last sequence number read from the agent: where a reconnect resumes
        self.cursor = since
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(settings.console_queue_frames)
        self.bucket = TokenBucket(settings.console_command_rate, settings.console_command_burst)
        #: the last batch frame passed through unparsed, when the cursor is not yet past it
        self._unsettled: str | None = None
        #: whether output frames may pass unparsed (not before the first one of a connection)
        self._trusted = False
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        #: set while the agent's websocket is open: commands wait for it across a reconnect
        self.connected = asyncio.Event()

    async def run(self) -> None:
        error: GameplaneError | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            # Connected before anything is read from the browser: a command sent right
            # after the handshake reaches the agent.
            self._opened(await self._connect())
            tasks = [asyncio.create_task(work()) for work in (self._upstream, self._downstream,
                                                                self._client, self._watch)]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, GameplaneError):
                    error = exc
                elif exc is not None and not isinstance(exc, WebSocketDisconnect | OSError | RuntimeError):
                    log.error("console proxy for %s failed", self.grant.instance_id, exc_info=exc)
                    error = GameplaneError("internal_error")
        except GameplaneError as exc:
            error = exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.upstream is not None:
                await self.upstream.close()
        if error is not None:
            await close_with(self.websocket, error)
        else:
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await self.websocket.close()

    async def _send(self, payload: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(payload))

    # -- agent → queue -------------------------------------------------------------------------
    def _opened(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.upstream = ws
        self._trusted = False
        self.connected.set()

    async def _upstream(self) -> None:
        while True:
            ws = self.upstream or await self._connect()
            self._opened(ws)
            try:
                async for message in ws:
                    if message.type is aiohttp.WSMsgType.TEXT:
                        await self._from_agent(message.data)
                    elif message.type is aiohttp.WSMsgType.ERROR:
                        break
            finally:
                self.upstream = None
                self.connected.clear()
                await ws.close()
            log.info("console of %s: the agent's websocket dropped; resuming after %s",
                     self.grant.instance_id, self.cursor)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.service.settings.console_upstream_retry
        delay = 0.1
        self._settle()
        while True:
            params = {"batch": "1"} if self.cursor is None else {"batch": "1", "since": str(self.cursor)}
            try:
                # A hung agent accepts the connection and never answers the upgrade.
                async with asyncio.timeout(min(_HANDSHAKE, max(deadline - loop.time(), 0.5))):
                    return await self.service.http.ws_connect(
                        self.endpoint.url("/console/ws"), params=params, headers=self.endpoint.headers,
                        heartbeat=_HEARTBEAT, max_msg_size=_MAX_AGENT_FRAME, compress=0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = str(exc) or exc.__class__.__name__
            if loop.time() + delay > deadline:
                raise AgentUnreachable("agent_unreachable", {"reason": reason})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _from_agent(self, raw: str) -> None:
        if self.batch and self._trusted and raw.startswith(_OUTPUT_PREFIX):
            # Passed through as it came: parsing a 256-line frame (~80 us) was half of
            # what a batch line cost the proxy. The agent sends consecutive frames on
            # one connection, so only the newest one is needed, to settle the cursor.
            self._unsettled = raw
            await self.queue.put(_Item(raw, batch=True))
            return
        self._settle()
        text: str | None = raw
        try:
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "output":
                first: int = frame["seq"]
                lines: list[str] = frame["lines"] if "lines" in frame else [frame["line"]]
            elif kind == "gap":
                self.cursor = max(self.cursor or 0, int(frame["to"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentBadResponse("agent_bad_response", {"frame": raw[:200]}) from exc
        if kind != "output":
            await self.queue.put(_Item(raw))
            return
        if self.cursor is not None and first <= self.cursor:
            lines = lines[self.cursor - first + 1:]  # already passed on: never twice
            if not lines:
                return
            first, text = self.cursor + 1, None
        self.cursor = first + len(lines) - 1
        self._trusted = True  # the first output frame of a connection is checked against the cursor
        await self.queue.put(_Item(text, first, lines))

    def _settle(self) -> None:
        """Bring the cursor up to the last output frame passed through unparsed."""
        if self._unsettled is not None:
            raw, self._unsettled = self._unsettled, None
            try:
                frame = json.loads(raw)
                self.cursor = int(frame["seq"]) + len(frame["lines"]) - 1
            except (ValueError, KeyError, TypeError) as exc:
                raise AgentBadResponse("agent_bad_response", {"frame": raw[:200]}) from exc

    # -- queue → browser -----------------------------------------------------------------------
    async def _downstream(self) -> None:
        # Straight to the server's ASGI send: Starlette's state checks and exception
        # wrapper were a tenth of a per-line frame's cost. The socket is open here, and
        # a closed one raises OSError (ClientDisconnected), which ends the connection.
        send = self.websocket._send
        held: _Item | None = None
        while True:
            item, held = held or await self.queue.get(), None
            if item.batch:
                text, held = self._merged(item)
                await send({"type": "websocket.send", "text": text})
            elif item.lines is None:
                await send({"type": "websocket.send", "text": item.text})
            elif self.batch:
                text = item.text or frames.batch(item.first, item.lines)
                await send({"type": "websocket.send", "text": text})
            else:
                first, output = item.first, frames.output
                for offset, line in enumerate(item.lines):
                    await send({"type": "websocket.send", "text": output(first + offset, line)})

    def _merged(self, item: _Item) -> tuple[str, _Item | None]:
        """``item``'s batch frame and the batch frames queued right behind it, as one
        (a browser that is behind gets fewer, bigger frames: each frame costs the API a
        send and the browser a parse; one that keeps up gets them as they come), and
        the first queued item that is not one, to send next."""
        texts = [item.text]
        size = len(item.text or "")
        while size < _MERGE_BYTES and not self.queue.empty():
            following = self.queue.get_nowait()
            if not following.batch:
                return frames.merge_batches(texts), following
            texts.append(following.text)
            size += len(following.text or "")
        return frames.merge_batches(texts), None

    # -- browser → agent -----------------------------------------------------------------------
    async def _client(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            try:
                await self._from_client(message.get("text"))
            except GameplaneError as exc:
                await self.websocket.send_text(frames.error(exc.code, exc.details))

    async def _from_client(self, text: str | None) -> None:
        if text is None:
            raise BadRequest("invalid_frame", {"reason": "send JSON text frames"})
        if len(text) > MAX_CLIENT_FRAME:
            raise BadRequest("frame_too_large", {"maxLength": MAX_CLIENT_FRAME})
        try:
            frame = json.loads(text)
        except ValueError as exc:
            raise BadRequest("invalid_json", {"reason": str(exc)}) from exc
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "command":
            if not self.bucket.take():
                await self._send({"type": "throttled", "retryAfter": round(self.bucket.wait(), 3)})
                return
            retry = self.service.settings.console_upstream_retry
            try:
                await asyncio.wait_for(self.connected.wait(), retry)
            except TimeoutError:
                raise AgentUnreachable("agent_unavailable",
                                       {"reason": "the agent's console is away"}) from None
            upstream = self.upstream
            assert upstream is not None
            # The agent validates the command and answers ack or error in the stream.
            await upstream.send_str(json.dumps({"type": "command", "command": frame.get("command")}))
        elif kind == "reauth":
            await self._reauth(frame.get("ticket"))
        else:
            raise BadRequest("invalid_frame", {"expected": [{"type": "command", "command": "..."},
                                                            {"type": "reauth", "ticket": "..."}]})

    async def _reauth(self, ticket: Any) -> None:
        if not isinstance(ticket, str) or not ticket:
            raise BadRequest("invalid_frame", {"reason": "reauth needs a ticket"})
        grant = await self.service.redeem(self.grant.instance_id, ticket)
        if grant.user_id != self.grant.user_id:
            raise Unauthorized("invalid_ticket", {"reason": "a ticket of another user"})
        await self.service.authorize(grant)
        self.grant = grant
        await self._send({"type": "reauthed", "expiresAt": iso(grant.expires_at)})

    # -- the grant -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        interval = self.service.settings.console_check_interval
        warning = self.service.settings.console_expiry_warning
        warned_for = None
        while True:
            expires = self.grant.expires_at
            pause = interval
            if expires is not None:
                left = (expires - self.service.clock()).total_seconds()
                if left <= 0:
                    raise Unauthorized("token_expired", {"reason": "send a reauth ticket before expiresAt, "
                                                                   "or reconnect with since=<last seq>"})
                if left <= warning and warned_for != expires:
                    warned_for = expires
                    await self._send({"type": "token_expiring", "expiresAt": iso(expires)})
                pause = min(pause, left if warned_for == expires else left - warning)
            await asyncio.sleep(max(pause, 0.01))
            try:
                await self.service.authorize(self.grant)
            except GameplaneError:
                raise
            except Exception:  # a database hiccup is not a reason to end a console: next time
                log.warning("console check of %s failed", self.grant.instance_id, exc_info=True)
