"""Backup routes of a game server (DESIGN.md section 5). The agent's HTTP
status is passed on; the body is normalized (``shapes``). The download is a
streaming path of its own: the archive goes from the agent to the browser
chunk by chunk, never whole in the API's memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import aiohttp
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from gameplane.agents.client import AgentClient, AgentEndpoint
from gameplane.auth.principal import Principal, current_principal
from gameplane.backups import shapes
from gameplane.errors import GameplaneError
from gameplane.instances.service import InstanceService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
_CHUNK = 1 << 16


class CreateBackup(BaseModel):
    name: str | None = None


async def _endpoint(request: Request, caller: Principal, server_id: str) -> AgentEndpoint:
    svc: InstanceService = request.app.state.instances
    _, endpoint = await svc.active_endpoint(caller, server_id, "game")
    return endpoint


async def _forward(request: Request, endpoint: AgentEndpoint, method: str, route: str,
                   payload: Any = None) -> tuple[int, Any, str | None]:
    client: AgentClient = request.app.state.client
    result = await client.forward(endpoint, method, route, payload)
    assert result.status_code is not None
    return result.status_code, result.body, result.detail


def _answer(status: int, body: Any, detail: str | None, shape: Any) -> Response:
    if 200 <= status < 300:
        if status == 204:
            return Response(status_code=204)
        return JSONResponse(shape(body), status_code=status)
    return JSONResponse(shapes.envelope(status, body, detail), status_code=status)


@router.get("/api/game/servers/{server_id}/backups")
async def list_backups(server_id: str, request: Request, caller: Caller) -> Response:
    endpoint = await _endpoint(request, caller, server_id)
    return _answer(*await _forward(request, endpoint, "GET", "/backups"), shapes.backup_list)


@router.post("/api/game/servers/{server_id}/backups", status_code=202)
async def create_backup(server_id: str, request: Request, caller: Caller,
                        body: CreateBackup | None = None) -> Response:
    endpoint = await _endpoint(request, caller, server_id)
    payload = {"name": body.name} if body is not None and body.name else None
    return _answer(*await _forward(request, endpoint, "POST", "/backups", payload), shapes.backup_one)


@router.post("/api/game/servers/{server_id}/backups/restore", status_code=202)
async def restore_backup(server_id: str, request: Request, caller: Caller,
                         backup_id: Annotated[str, Query(alias="id")]) -> Response:
    endpoint = await _endpoint(request, caller, server_id)
    status, body, detail = await _forward(request, endpoint, "POST",
                                          f"/backups/restore?id={quote(backup_id, safe='')}")
    return _answer(status, body, detail, lambda b: shapes.restore(b, backup_id))


@router.delete("/api/game/servers/{server_id}/backups/{backup_id}", status_code=204)
async def delete_backup(server_id: str, backup_id: str, request: Request, caller: Caller) -> Response:
    endpoint = await _endpoint(request, caller, server_id)
    return _answer(*await _forward(request, endpoint, "DELETE", f"/backups/{quote(backup_id, safe='')}"),
                   lambda b: b)


@router.get("/api/game/servers/{server_id}/backups/{backup_id}/download",
            response_class=StreamingResponse)
async def download_backup(server_id: str, backup_id: str, request: Request, caller: Caller) -> Response:
    endpoint = await _endpoint(request, caller, server_id)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60))
    try:
        upstream = await session.get(endpoint.url(f"/backups/{quote(backup_id, safe='')}/download"),
                                     headers=endpoint.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        await session.close()
        raise GameplaneError("agent_unreachable", {"reason": str(exc) or exc.__class__.__name__},
                             status=502) from exc
    if upstream.status != 200:
        raw = await upstream.read()
        await session.close()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        return JSONResponse(shapes.envelope(upstream.status, body, raw[:200].decode("utf-8", "replace")),
                            status_code=upstream.status)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                yield chunk
        finally:
            upstream.release()
            await session.close()

    headers = {k: v for k, v in upstream.headers.items()
               if k.lower() in ("content-length", "content-disposition", "content-type")}
    return StreamingResponse(chunks(), headers=headers,
                             media_type=upstream.headers.get("content-type", "application/octet-stream"))
