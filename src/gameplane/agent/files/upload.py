"""One streamed upload into the data dir: temp file beside the target,
written as the body arrives, fsynced and renamed over the target only when
the whole body is there. Any failure, a limit crossed or the client gone
removes the temp file, so an interrupted upload leaves nothing behind (and
the agent's start sweeps what a killed agent left: ``sweep_uploads``).

Limits (``413`` in the envelope): the agent's per-upload maximum
(``too_large``) and the template's ``limits.disk`` minus what the data dir
already holds (``quota_exceeded``; the file being replaced counts as freed).
With a ``Content-Length`` they are checked before the first byte is read —
together with the filesystem's free space (``507 insufficient_storage``) — so
the agent answers at once and, if the client sent ``Expect: 100-continue``,
no byte of the body is ever sent. Without one (chunked) they are enforced as
the bytes arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gameplane.agent.files.datadir import FILE_MODE, TEMP_PREFIX, DataDir, Walk, split_path
from gameplane.errors import Conflict, InsufficientStorage, PayloadTooLarge

#: bytes gathered before one write(2) in a worker thread: large enough that the
#: thread hand-off is amortized, small enough to bound the agent's memory per upload
FLUSH_BYTES = 1 << 20


@dataclass(frozen=True)
class Budget:
    """How many bytes this upload may have, and which limit says so."""

    limit: int
    code: str
    details: dict[str, int]

    def refuse(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(self.code, {**self.details, "sizeBytes": size})


def budget(max_upload: int, quota: int | None, used: int, replaced: int) -> Budget:
    """The tighter of the per-upload maximum and the quota's room."""
    room = None if quota is None else max(0, quota - used + replaced)
    if room is not None and room < max_upload:
        return Budget(room, "quota_exceeded", {"quotaBytes": quota or 0, "usedBytes": used,
                                               "availableBytes": room})
    return Budget(max_upload, "too_large", {"maxBytes": max_upload})


class Upload:
    """The temp file of one upload (created by ``open``, gone after ``commit`` or ``abort``)."""

    def __init__(self, data: DataDir, walk: Walk, path: str):
        self.data = data
        self.walk = walk
        self.path = path
        assert walk.name is not None
        self.name = walk.name
        self.temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          FILE_MODE, dir_fd=walk.parent_fd)
        self.written = 0

    @classmethod
    def open(cls, data: DataDir, path: str) -> Upload:
        walk = data.walk(path, split_path(path), create=True)
        try:
            return cls(data, walk, path)
        except BaseException:
            walk.close()
            raise

    def write(self, chunks: list[bytes]) -> None:
        """All of ``chunks``, however many write(2) calls that takes."""
        try:
            while chunks:
                done = os.writev(self.fd, chunks)
                self.written += done
                while chunks and done >= len(chunks[0]):
                    done -= len(chunks[0])
                    chunks.pop(0)
                if done:
                    chunks[0] = chunks[0][done:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(details={"path": self.path, "writtenBytes": self.written}) from exc
            raise

    def commit(self) -> None:
        """Make the file durable, give it to the workload's user, and rename it
        over the target in one step."""
        os.fsync(self.fd)
        if self.data.uid is not None:
            os.fchown(self.fd, self.data.uid, self.data.uid)
        os.close(self.fd)
        self.fd = -1
        if not self.data.is_current(self.walk):
            raise Conflict("busy", {"operation": "restore",
                                    "reason": "the data dir was replaced during the upload"})
        try:
            os.rename(self.temp, self.name, src_dir_fd=self.walk.parent_fd, dst_dir_fd=self.walk.parent_fd)
        except IsADirectoryError:
            raise Conflict("is_a_directory", {"path": self.path}) from None
        os.fsync(self.walk.parent_fd)
        self.temp = ""

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp, dir_fd=self.walk.parent_fd)
            self.temp = ""

    def close(self) -> None:
        self.abort()
        self.walk.close()


async def receive(upload: Upload, body: AsyncIterator[bytes], allowed: Budget) -> int:
    """Write ``body`` into ``upload`` as it arrives; the byte count. The write
    of one batch overlaps the receipt of the next, and runs in a thread: a
    write(2) can block for long (dirty-page throttling, a slow disk) and the
    event loop serves every instance on the node."""
    batch: list[bytes] = []
    batched = received = 0
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in body:
            received += len(chunk)
            if received > allowed.limit:
                raise allowed.refuse(received)
            batch.append(chunk)
            batched += len(chunk)
            if batched >= FLUSH_BYTES:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(asyncio.to_thread(upload.write, batch))
                batch, batched = [], 0
        if pending is not None:
            await pending
            pending = None
        if batch:
            await asyncio.to_thread(upload.write, batch)
    except BaseException:
        if pending is not None:
            # The thread owns the descriptor until its write returns.
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        raise
    return received


def check_length(length: int | None, allowed: Budget, free: int) -> None:
    """Refuse a declared length before reading any of it."""
    if length is None:
        return
    if length > allowed.limit:
        raise allowed.refuse(length)
    if length > free:
        raise InsufficientStorage(details={"sizeBytes": length, "freeBytes": free})

