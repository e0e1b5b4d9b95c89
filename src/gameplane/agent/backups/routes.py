"""The ``/backups`` routes of the agent contract (docs/agent.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gameplane.agent.backups.manager import BackupManager
from gameplane.errors import Unprocessable

ManagerHandler = Callable[[Request, BackupManager], Awaitable[Response]]


async def list_backups(request: Request, manager: BackupManager) -> Response:
    return JSONResponse({"backups": manager.listing()})


async def create_backup(request: Request, manager: BackupManager, body: dict[str, Any]) -> Response:
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise Unprocessable("invalid_name", {"reason": "name must be a string of at most 200 characters"})
    record = await manager.request_backup(name)
    return JSONResponse({"backup": record.to_json()}, status_code=202)


async def restore_backup(request: Request, manager: BackupManager) -> Response:
    backup_id = request.query_params.get("id")
    if not backup_id:
        raise Unprocessable("missing_field", {"field": "id"})
    return JSONResponse({"restore": await manager.request_restore(backup_id)}, status_code=202)


async def delete_backup(request: Request, manager: BackupManager) -> Response:
    manager.delete(request.path_params["backup_id"])
    return Response(status_code=204)


def lock_backup(locked: bool) -> ManagerHandler:
    async def handler(request: Request, manager: BackupManager) -> Response:
        record = manager.set_locked(request.path_params["backup_id"], locked)
        return JSONResponse({"backup": record.to_json()})

    return handler


async def download_backup(request: Request, manager: BackupManager) -> Response:
    chunks, media_type, filename = manager.download(request.path_params["backup_id"])
    return StreamingResponse(iterate_in_threadpool(chunks), media_type=media_type,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})
