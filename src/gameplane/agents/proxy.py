"""How the API's game-server routes reach an instance's agent: ownership
first (``active_endpoint``: another user's server is a 404), then either one
forwarded call whose HTTP status is passed on (``forward`` / ``answer``), or
one of the two streaming paths, which never hold a body whole in the API's
memory or on its disk:

* ``stream_download``: the agent's response body goes to the browser chunk
  by chunk (backup archives, files);
* ``stream_upload``: the browser's request body goes to the agent chunk by
  chunk, with ``Expect: 100-continue`` so that an agent refusing at once
  (``413``, ``409 busy``, a bad path) is answered before any byte is sent
  on, and with the API's own size limit counted as the bytes pass.

Every non-2xx answer leaves as the envelope, keeping the agent's code where
it had one (``envelope``); no answer at all is ``502
agent_unreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from gameplane.agents.client import GENERIC_CODES, AgentClient, AgentEndpoint, AgentTimeout, is_envelope
from gameplane.auth.principal import Principal
from gameplane.errors import BadRequest, GameplaneError, PayloadTooLarge
from gameplane.instances.service import InstanceService
from gameplane.net import content_length

#: bytes per read of a download from the agent
CHUNK = 1 << 16
#: an error body from the agent is read up to this much
_ERROR_BODY = 1 << 16
#: seconds an upload waits for the agent's first answer (``100 Continue`` or a
#: refusal): its checks may walk the data dir to measure it against a quota
FIRST_ANSWER = 15.0
Shape = Callable[[Any], Any]


def envelope(status: int, body: Any, detail: str | None) -> dict[str, Any]:
    """The envelope for a non-2xx answer, keeping the agent's code where it had one."""
    if is_envelope(body):
        return {"error": body["error"], "details": body.get("details")}
    return {"error": GENERIC_CODES.get(status, "agent_error"),
            "details": {"agentStatus": status, "agentBody": body if body is not None else detail}}


async def game_endpoint(request: Request, caller: Principal, server_id: str) -> AgentEndpoint:
    svc: InstanceService = request.app.state.instances
    _, endpoint = await svc.active_endpoint(caller, server_id, "game")
    return endpoint


async def forward(request: Request, endpoint: AgentEndpoint, method: str, route: str,
                  payload: Any = None) -> tuple[int, Any, str | None]:
    client: AgentClient = request.app.state.client
    result = await client.forward(endpoint, method, route, payload)
    assert result.status_code is not None
    return result.status_code, result.body, result.detail


def answer(status: int, body: Any, detail: str | None, shape: Shape) -> Response:
    """The agent's status with ``shape(body)`` on success, else the envelope."""
    if 200 <= status < 300:
        if status == 204:
            return Response(status_code=204)
        return JSONResponse(shape(body), status_code=status)
    return JSONResponse(envelope(status, body, detail), status_code=status)


def _session(read_timeout: float | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(
        total=None, sock_connect=5, sock_read=read_timeout))


def _unreachable(exc: BaseException) -> GameplaneError:
    return GameplaneError("agent_unreachable", {"reason": str(exc) or exc.__class__.__name__}, status=502)


async def _error_answer(upstream: aiohttp.ClientResponse) -> Response:
    raw = await upstream.content.read(_ERROR_BODY)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    return JSONResponse(envelope(upstream.status, body, raw[:200].decode("utf-8", "replace")),
                        status_code=upstream.status)


async def stream_download(endpoint: AgentEndpoint, route: str) -> Response:
    """``GET route`` on the agent, its body streamed to the caller."""
    session = _session(60)
    try:
        upstream = await session.get(endpoint.url(route), headers=endpoint.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        await session.close()
        raise _unreachable(exc) from exc
    if upstream.status != 200:
        try:
            return await _error_answer(upstream)
        finally:
            upstream.release()
            await session.close()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                yield chunk
        finally:
            upstream.release()
            await session.close()

    headers = {k: v for k, v in upstream.headers.items()
               if k.lower() in ("content-length", "content-disposition", "content-type")}
    return StreamingResponse(chunks(), headers=headers,
                             media_type=upstream.headers.get("content-type", "application/octet-stream"))


class _CountedBody:
    """The caller's body as it arrives, stopped at ``limit`` bytes. Why it
    stopped early is kept: aiohttp only sees its writer fail. ``wanted`` is
    set when aiohttp first asks for it: the agent answered ``100 Continue``."""

    def __init__(self, request: Request, limit: int):
        self.request = request
        self.limit = limit
        self.sent = 0
        self.stopped: GameplaneError | None = None
        self.wanted = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        self.wanted.set()
        try:
            async for chunk in self.request.stream():
                self.sent += len(chunk)
                if self.sent > self.limit:
                    self.stopped = PayloadTooLarge("too_large", {"maxBytes": self.limit,
                                                                 "sizeBytes": self.sent})
                    raise self.stopped
                if chunk:
                    yield chunk
        except ClientDisconnect:
            self.stopped = BadRequest("upload_interrupted", {"receivedBytes": self.sent})
            raise


async def _first_answer(put: asyncio.Future[aiohttp.ClientResponse], wanted: asyncio.Event,
                        route: str) -> None:
    waiting: asyncio.Future[Any] = asyncio.ensure_future(wanted.wait())
    either: set[asyncio.Future[Any]] = {put, waiting}
    try:
        done, _ = await asyncio.wait(either, timeout=FIRST_ANSWER,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if not done:
        put.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await put
        raise AgentTimeout(details={"route": route, "reason": f"no answer within {FIRST_ANSWER:g}s"})


async def stream_upload(request: Request, endpoint: AgentEndpoint, route: str, limit: int,
                        shape: Shape) -> Response:
    """``PUT route`` on the agent with the caller's body streamed through.
    A declared length over ``limit`` is refused before reading; a chunked body
    is cut off (and the agent's temp file with it) when it passes ``limit``."""
    length = content_length(request.headers.get("content-length"))
    if length is not None and length > limit:
        raise PayloadTooLarge("too_large", {"maxBytes": limit, "sizeBytes": length})
    body = _CountedBody(request, limit)
    headers = {**endpoint.headers, "Content-Type": "application/octet-stream"}
    if length is not None:
        headers["Content-Length"] = str(length)  # passed on: the agent checks it before the body
    # No read timeout: the agent answers only once the whole body is through,
    # however long a slow client takes; a vanished client ends the upload anyway.
    # Only its first answer (100 Continue, or a refusal) is waited for at most
    # FIRST_ANSWER seconds, so a hung agent is not mistaken for a slow upload.
    session = _session(None)
    try:
        put = asyncio.ensure_future(session.put(endpoint.url(route), data=body.chunks(), headers=headers,
                                                expect100=True))
        await _first_answer(put, body.wanted, route)
        upstream = await put
        try:
            if upstream.status >= 300:
                return await _error_answer(upstream)
            raw = await upstream.content.read(_ERROR_BODY)
        finally:
            upstream.release()
    except (aiohttp.ClientError, TimeoutError) as exc:
        if body.stopped is not None:
            raise body.stopped from exc
        raise _unreachable(exc) from exc
    finally:
        await session.close()
    try:
        result = json.loads(raw)
    except ValueError:
        result = None
    return answer(upstream.status, result, None, shape)
