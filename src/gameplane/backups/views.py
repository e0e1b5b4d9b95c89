"""Backup routes of a game server (DESIGN.md section 5). The agent's HTTP
status is passed on; the body is normalized (``shapes``). The download is a
streaming path (``agents.proxy.stream_download``): the archive goes from the
agent to the browser chunk by chunk, never whole in the API's memory."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gameplane.agents.proxy import answer, forward, game_endpoint, stream_download
from gameplane.auth.principal import Principal, current_principal
from gameplane.backups import shapes

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


class CreateBackup(BaseModel):
    name: str | None = None


@router.get("/api/game/servers/{server_id}/backups")
async def list_backups(server_id: str, request: Request, caller: Caller) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    return answer(*await forward(request, endpoint, "GET", "/backups"), shapes.backup_list)


@router.post("/api/game/servers/{server_id}/backups", status_code=202)
async def create_backup(server_id: str, request: Request, caller: Caller,
                        body: CreateBackup | None = None) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    payload = {"name": body.name} if body is not None and body.name else None
    return answer(*await forward(request, endpoint, "POST", "/backups", payload), shapes.backup_one)


@router.post("/api/game/servers/{server_id}/backups/restore", status_code=202)
async def restore_backup(server_id: str, request: Request, caller: Caller,
                         backup_id: Annotated[str, Query(alias="id")]) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    status, body, detail = await forward(request, endpoint, "POST",
                                         f"/backups/restore?id={quote(backup_id, safe='')}")
    return answer(status, body, detail, lambda b: shapes.restore(b, backup_id))


@router.delete("/api/game/servers/{server_id}/backups/{backup_id}", status_code=204)
async def delete_backup(server_id: str, backup_id: str, request: Request, caller: Caller) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    return answer(*await forward(request, endpoint, "DELETE", f"/backups/{quote(backup_id, safe='')}"),
                  lambda b: b)


@router.get("/api/game/servers/{server_id}/backups/{backup_id}/download",
            response_class=StreamingResponse)
async def download_backup(server_id: str, backup_id: str, request: Request, caller: Caller) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    return await stream_download(endpoint, f"/backups/{quote(backup_id, safe='')}/download")
