"""The ``/files`` routes of the agent contract (docs/agent.md, "Files").

Reads (list, download) are always allowed. Writes (upload, delete) answer
``409 busy`` while a restore holds the instance: the restore swaps the data
dir, and a file written into the old one would silently vanish. An upload
that was already streaming when a restore began fails the same way at its
end (nothing is left behind). Backups and power actions do not block writes:
a backup of a running server already copies a tree the server writes to.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gameplane.agent.files.datadir import DataDir, chunks_of, split_path
from gameplane.agent.files.upload import Budget, Upload, budget, check_length, receive
from gameplane.agent.supervisor import Supervisor
from gameplane.errors import BadRequest, Conflict, NotFound
from gameplane.net import content_length

DEFAULT_MAX_UPLOAD = 10 << 30


@dataclass(frozen=True)
class FileSettings:
    """The agent's file options (``--upload-max-bytes``)."""

    max_upload: int = DEFAULT_MAX_UPLOAD


class FileManager:
    """The file manager of one instance (made per request: it keeps no state)."""

    def __init__(self, sup: Supervisor, settings: FileSettings):
        self.sup = sup
        self.settings = settings
        self.data = DataDir(sup.files.paths.data, sup.files.config.uid)

    def writable(self) -> None:
        if self.sup.busy == "restore":
            raise Conflict("busy", {"operation": "restore"})

    def plan(self, path: str) -> tuple[Budget, int]:
        """The upload's budget and the filesystem's free bytes, without
        creating anything (a refused upload leaves no empty folders either)."""
        parts = split_path(path)
        replaced = 0
        try:
            with self.data.walk(path, parts) as walk:
                replaced = self.data.size_of(walk, path)
        except NotFound:
            pass  # a parent folder does not exist yet: the upload creates it
        quota = self.sup.files.template.limits.disk
        used = self.sup.files.data_bytes() if quota is not None else 0
        free = shutil.disk_usage(self.data.root).free
        return budget(self.settings.max_upload, quota, used, replaced), free


FileHandler = Callable[[Request, FileManager], Awaitable[Response]]


def _path(request: Request, *, required: bool = True) -> str:
    path = request.query_params.get("path")
    if path is None:
        if required:
            raise BadRequest("missing_field", {"field": "path"})
        return ""
    return path


async def list_files(request: Request, files: FileManager) -> Response:
    entries = await asyncio.to_thread(files.data.listing, _path(request, required=False))
    return JSONResponse({"entries": entries})


async def download_file(request: Request, files: FileManager) -> Response:
    fd, size, name = await asyncio.to_thread(files.data.open_file, _path(request))
    return StreamingResponse(iterate_in_threadpool(chunks_of(fd)), media_type="application/octet-stream",
                             headers={"Content-Length": str(size),
                                      "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"})


async def delete_file(request: Request, files: FileManager) -> Response:
    path = _path(request)
    files.writable()
    await asyncio.to_thread(files.data.delete, path)
    return Response(status_code=204)


async def upload_file(request: Request, files: FileManager) -> Response:
    path = _path(request)
    files.writable()
    length = content_length(request.headers.get("content-length"))
    allowed, free = await asyncio.to_thread(files.plan, path)
    check_length(length, allowed, free)
    upload = await asyncio.to_thread(Upload.open, files.data, path)
    try:
        try:
            size = await receive(upload, request.stream(), allowed)
        except ClientDisconnect:
            raise BadRequest("upload_interrupted", {"path": path}) from None
        files.writable()
        await asyncio.to_thread(upload.commit)
    finally:
        await asyncio.to_thread(upload.close)
    return JSONResponse({"file": {"path": "/".join(split_path(path)), "sizeBytes": size}}, status_code=201)
