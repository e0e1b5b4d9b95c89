"""File routes of a game server (DESIGN.md section 5): list, download, upload,
delete, all relative to the server's data dir. The agent checks the path (and
is the one place that does: docs/agent.md, "Files"); its status is passed on
and its body normalized (``shapes``). Upload and download are the streaming
paths of ``agents.proxy``: a body is never whole in the API's memory or on
its disk, whatever its size."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from gameplane.agents.proxy import answer, forward, game_endpoint, stream_download, stream_upload
from gameplane.auth.principal import Principal, current_principal
from gameplane.files import shapes
from gameplane.settings import Settings

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]
FilePath = Annotated[str, Query(description="relative to the server's data dir")]


def _route(route: str, path: str) -> str:
    return f"{route}?path={quote(path, safe='')}"


@router.get("/api/game/servers/{server_id}/files")
async def list_files(server_id: str, request: Request, caller: Caller, path: FilePath = "") -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    return answer(*await forward(request, endpoint, "GET", _route("/files", path)), shapes.listing)


@router.get("/api/game/servers/{server_id}/files/content", response_class=StreamingResponse)
async def download_file(server_id: str, request: Request, caller: Caller, path: FilePath) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    return await stream_download(endpoint, _route("/files/content", path))


@router.put("/api/game/servers/{server_id}/files", status_code=201)
async def upload_file(server_id: str, request: Request, caller: Caller, path: FilePath) -> Response:
    """The request body is the file's content, sent as it is (any content type)."""
    endpoint = await game_endpoint(request, caller, server_id)
    settings: Settings = request.app.state.settings
    return await stream_upload(request, endpoint, _route("/files", path), settings.upload_max_bytes,
                               lambda body: shapes.uploaded(body, path))


@router.delete("/api/game/servers/{server_id}/files", status_code=204)
async def delete_file(server_id: str, request: Request, caller: Caller, path: FilePath) -> Response:
    endpoint = await game_endpoint(request, caller, server_id)
    return answer(*await forward(request, endpoint, "DELETE", _route("/files", path)), lambda b: b)
