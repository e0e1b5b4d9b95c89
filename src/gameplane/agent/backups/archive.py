"""The default engine: one ``<id>.tar.zst`` per backup in the instance's
``backups/`` dir.

The archive is a plain tar (any ``tar -I zstd -xf`` reads it) whose last
member, ``.gameplane-manifest.json``, lists every entry with its type and,
for regular files, size and SHA-256. Each file is read once: the same bytes
are hashed and handed to a multi-threaded zstd stream. The archive is
written to a temp name, fsynced and renamed, so a record marked completed
always has its whole archive. Restores: ``extract``.

Creating an archive is mostly hashing (every file, then the archive itself)
and compressing; each runs on threads of its own, so the reading thread
only reads files and builds tar headers (``tarformat``):

* files of up to ``_SMALL_FILE`` are read with one ``read`` and hashed by a
  pool; a larger file is read in chunks hashed in order by one thread;
* small members are gathered into one buffer before they go to zstd (one
  call instead of three per file);
* zstd compresses on a thread of its own; the compressed stream is hashed
  and written by another.

What is in flight is bounded: the pools' queues and the writer's queue.

Cost: SHA-256 runs at ~380 MiB/s per core on a CPU without SHA extensions,
so the two hashes of a 1 GiB data dir (its files, then a ~620 MiB archive)
are ~4.5 CPU-seconds, more than ``tar -I zstd -cf`` spends on the whole job
(~3.5). On two cores that bounds this engine to about half of tar's
throughput whatever the code does; ``bench/README.md`` has the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import zstandard

from gameplane.agent.backups import safety, tarformat
from gameplane.agent.backups.engine import BackupFailed, Progress, Source
from gameplane.agent.backups.extract import MANIFEST, extract_archive
from gameplane.agent.backups.records import BackupRecord, RecordStore

CHUNK = 4 << 20
_SMALL_FILE = 4 << 20  # read whole, hashed by the pool
_BATCH = 1 << 20  # small members gathered before they go to zstd
_HASHERS = 2
_QUEUED = 8  # chunks waiting for a hasher or for the archive writer
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
Entry = dict[str, Any]


class _Stage:
    """A thread that hands each item put to it to ``fn``, in order; a failure
    is raised to the putting thread (at its next ``put`` or at ``close``)."""

    def __init__(self, fn: Callable[[Any], object], name: str):
        self.fn = fn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, only drain (the putter must not block)
                try:
                    self.fn(item)
                except BaseException as exc:
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every item to be handled."""
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the thread, whatever happened (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _ArchiveFile:
    """The archive file, hashed and counted as the compressor hands it chunks
    (a ``_Stage`` of its own calls ``_write``)."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0
        self.stage = _Stage(self._write, "backup-writer")

    def _write(self, data: bytes) -> None:
        self.sha.update(data)
        self.raw.write(data)

    def write(self, data: bytes) -> int:
        self.stage.put(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """(The compressor calls this when it flushes: the chunks are queued; ``stage.close`` waits.)"""


class _Hashers:
    """SHA-256 of files off the reading thread: whole small files in a pool,
    a large file's chunks in order on a thread of its own."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(_HASHERS, thread_name_prefix="backup-hash")
        self.ordered = ThreadPoolExecutor(1, thread_name_prefix="backup-hash-large")
        self._slots = threading.BoundedSemaphore(_QUEUED * _HASHERS)

    def _bounded(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Future[Any]:
        self._slots.acquire()
        future = pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def whole(self, data: bytes) -> Future[str]:
        return self._bounded(self.pool, _hexdigest, data)

    def chunk(self, sha: Any, data: bytes) -> None:
        self._bounded(self.ordered, sha.update, data)

    def digest(self, sha: Any) -> Future[str]:
        return self.ordered.submit(sha.hexdigest)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.ordered.shutdown(wait=True, cancel_futures=True)


def _hexdigest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(fd: int, size: int, rel: str) -> bytes:
    data = os.read(fd, size)
    while len(data) < size:  # short reads are rare, but allowed
        more = os.read(fd, size - len(data))
        if not more:
            raise BackupFailed("file_changed", {"path": rel, "reason": "it shrank while being copied"})
        data += more
    return data


class _Packer:
    def __init__(self, out: _Stage, progress: Progress):
        self.out, self.progress = out, progress
        self.batch = bytearray()
        self.hashers = _Hashers()
        self.entries: dict[str, Entry] = {}
        self.digests: list[tuple[str, Future[str]]] = []

    def add(self, rel: str, full: str, st: os.stat_result) -> None:
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(full, _OPEN)
            try:
                self._file(rel, fd, mode, mtime)
            finally:
                os.close(fd)
        elif stat.S_ISDIR(st.st_mode):
            self._put(tarformat.header(rel, tarformat.DIR, mode=mode, mtime=mtime))
            self.entries[rel] = {"type": "dir"}
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            self._put(tarformat.header(rel, tarformat.SYMLINK, mode=mode, mtime=mtime, link=target))
            self.entries[rel] = {"type": "symlink", "target": target}
        # Sockets and fifos in a data dir are runtime objects: not part of a world.

    def _file(self, rel: str, fd: int, mode: int, mtime: int) -> None:
        size = os.fstat(fd).st_size
        head = tarformat.header(rel, tarformat.REG, size, mode, mtime)
        self.entries[rel] = {"type": "file", "size": size}
        if size <= _SMALL_FILE:
            data = _read(fd, size, rel)
            self.digests.append((rel, self.hashers.whole(data)))
            self._put(head, data, tarformat.padding(size))
            self.progress.advance(size)
        else:
            self._put(head)
            self._flush()
            sha, left = hashlib.sha256(), size
            while left:
                data = _read(fd, min(left, CHUNK), rel)
                self.hashers.chunk(sha, data)
                self.out.put(data)
                left -= len(data)
                self.progress.advance(len(data))
            self.digests.append((rel, self.hashers.digest(sha)))
            self._put(tarformat.padding(size))
        self.progress.files_done += 1

    def _put(self, *parts: bytes) -> None:
        for part in parts:
            self.batch += part
        if len(self.batch) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.batch:
            self.out.put(self.batch)
            self.batch = bytearray()

    def finish(self) -> None:
        """The manifest (every hash in) and the end of the tar stream."""
        for rel, future in self.digests:
            self.entries[rel]["sha256"] = future.result()
        manifest = json.dumps({"version": 1, "entries": self.entries}).encode()
        self._put(tarformat.header(MANIFEST, tarformat.REG, len(manifest), 0o600), manifest,
                  tarformat.padding(len(manifest)), tarformat.END)
        self._flush()


def write_archive(target: IO[bytes], source: Source, progress: Progress, level: int = 3) -> tuple[int, str]:
    """Write the tar.zst of ``source`` to ``target``; answer (size, sha256) of the archive."""
    out = _ArchiveFile(target)
    # Single-threaded zstd, on a thread of its own: with every core busy hashing,
    # zstd's own worker threads only cost more CPU (about 40 % more here).
    z = zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False,  # type: ignore[arg-type]
                                                              write_size=CHUNK)
    compressing = _Stage(z.write, "backup-compress")
    packer = _Packer(compressing, progress)
    try:
        for rel, full, st in source.entries():
            if rel != MANIFEST:
                packer.add(rel, full, st)
        packer.finish()
        compressing.close()
        z.close()  # type: ignore[no-untyped-call]  # the end of the zstd frame, to ``out``
        out.stage.close()
    finally:
        compressing.stop()
        out.stage.stop()
        packer.hashers.close()
    return out.size, out.sha.hexdigest()


class ArchiveEngine:
    name = "archive"

    def __init__(self, store: RecordStore, download_name: str):
        self.store = store
        self.download_name = download_name

    def create(self, record: BackupRecord, source: Source, progress: Progress) -> None:
        self.store.ensure()
        dest = self.store.archive_path(record.id)
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                record.size_bytes, record.sha256 = write_archive(fh, source, progress)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        record.data_bytes = progress.bytes_done

    def restore(self, record: BackupRecord, staging: Path, progress: Progress) -> None:
        path = self.store.archive_path(record.id)
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError as exc:
            raise BackupFailed("archive_missing", {"path": str(path)}) from exc
        with fh:
            sha, _ = extract_archive(fh, staging, progress)
        if record.sha256 and sha != record.sha256:
            raise safety.refuse("", f"the archive's SHA-256 is {sha}, the backup recorded {record.sha256}")

    def delete(self, record: BackupRecord) -> None:
        self.store.remove(record.id)

    def download(self, record: BackupRecord) -> tuple[Iterator[bytes], str, str]:
        path = self.store.archive_path(record.id)
        fh = open(path, "rb")  # noqa: SIM115 - closed by the generator

        def chunks() -> Iterator[bytes]:
            with fh:
                while block := fh.read(CHUNK):
                    yield block

        return chunks(), "application/zstd", f"{self.download_name}-{record.id}.tar.zst"
