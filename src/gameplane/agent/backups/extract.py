"""Restore of an archive into an empty staging dir, every member checked
before anything is written for it and every byte verified.

Three kinds of threads share the work (hashing, ``zstd`` and ``write``
release the GIL, so they run on all cores):

* the reader thread reads the archive, hashes it (its SHA-256 must be the
  one the backup recorded) and decompresses it into blocks of ``_BLOCK``;
* this thread parses the tar headers (``tarformat``, over the blocks, without
  copying file data), checks each member (``safety``, its place in the tree)
  and only then hands its data, as views into the blocks, to
* a pool of writer threads: a small file is created, written and hashed by
  one task (in batches); a large file is hashed here, in order, while its chunks are
  written by the pool with ``pwrite``.

The result must equal the manifest (the last member) exactly: same entries,
same sizes and hashes. What is in flight is bounded (``_INFLIGHT_BYTES`` of
the stream between the oldest unfinished write and the parser). Files get
no fsync of their own: the agent ``syncfs``'s the staging dir once, before
the swap (``swap.swap_in``).

The parser is ours (``tarformat``) because ``tarfile`` builds a ``TarInfo``
and copies its buffer for every member; GNU tar doing the writing while this
thread checks the headers was the other way considered, but tar would have to
be fed only members already checked (a pipe and a copy of every byte), and the
hashes would still be ours: the time goes to SHA-256 (the archive's and every
file's, ~4.5 CPU-seconds per GiB restored on CPUs without SHA extensions),
not to the writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from gameplane.agent.backups import safety, tarformat
from gameplane.agent.backups.engine import Progress
from gameplane.agent.backups.tarformat import BLOCK, Member

MANIFEST = ".gameplane-manifest.json"
Entry = dict[str, Any]
_READ = 4 << 20  # compressed bytes per read of the archive
_BLOCK = 8 << 20  # decompressed bytes per block
_SMALL_FILE = 4 << 20  # written and hashed whole by one task
_CHUNK = 4 << 20  # a large file's chunks
_BATCH_FILES, _BATCH_BYTES = 256, 2 << 20  # small files handed to a writer at a time
_INFLIGHT_BYTES = 96 << 20
_WRITERS = 2
_MAX_MANIFEST = 256 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Reader:
    """The archive, read, hashed and decompressed by a thread of its own
    (as ``tar -I zstd`` runs two processes)."""

    def __init__(self, fh: IO[bytes]):
        self.sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(fh,), name="restore-reader",
                                        daemon=True)
        self._thread.start()

    def _produce(self, fh: IO[bytes]) -> None:
        item: bytes | BaseException = b""
        try:
            self._fh = fh
            reader = zstandard.ZstdDecompressor().stream_reader(self, read_size=_READ)  # type: ignore[arg-type]
            while not self._stop.is_set() and (block := reader.read(_BLOCK)):
                self._put(block)
            # The decompressor stops at the end of the frame: whatever follows is damage.
            if self.read(_READ):
                raise safety.refuse("", "data after the end of the zstd frame")
        except BaseException as exc:  # handed to the parsing thread
            item = exc
        self._put(item)

    def read(self, size: int) -> bytes:
        """For the decompressor: the archive's bytes, hashed on the way."""
        data = self._fh.read(size)
        self.sha.update(data)
        return data

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next(self) -> bytes:
        """The next block; b"" at the end (and on every call after it)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        if not item:
            self._queue.put(item)
        return item

    def drain(self) -> None:
        """Read to the end, so that the whole archive is hashed."""
        while self.next():
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Stream:
    """The tar stream over the reader's blocks: zero-copy views of file data."""

    def __init__(self, reader: _Reader):
        self.reader = reader
        self.view = memoryview(b"")
        self.pos = 0
        self.offset = 0  # bytes consumed so far

    def _fill(self) -> bool:
        if self.pos < len(self.view):
            return True
        block = self.reader.next()
        self.view, self.pos = memoryview(block), 0
        return bool(block)

    def pieces(self, size: int, most: int = _BLOCK) -> Iterator[memoryview]:
        """Views of the next ``size`` bytes, each at most ``most`` long."""
        while size:
            if not self._fill():
                raise safety.refuse("", "truncated archive")
            piece = self.view[self.pos:self.pos + min(size, most)]
            self.pos += len(piece)
            self.offset += len(piece)
            size -= len(piece)
            yield piece

    def take(self, size: int) -> bytes:
        return b"".join(self.pieces(size))

    def header(self) -> bytes:
        """The next header block, or b"" at the end of the stream."""
        return self.take(BLOCK) if self._fill() else b""

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass


def _write_files(batch: list[tuple[str, list[memoryview], int, float]]) -> list[str]:
    """Create staging files (never through a symlink, never over a file) and
    answer their SHA-256: runs in a writer thread, a batch of small files at
    a time."""
    digests = []
    for target, pieces, mode, mtime in batch:
        sha = hashlib.sha256()
        fd = os.open(target, _CREATE, 0o600)
        try:
            for piece in pieces:
                sha.update(piece)
                _write_all(fd, piece, None)
            _finish(fd, mode, mtime)
        finally:
            os.close(fd)
        digests.append(sha.hexdigest())
    return digests


def _write_all(fd: int, piece: memoryview, offset: int | None) -> list[str]:
    while piece:
        n = os.write(fd, piece) if offset is None else os.pwrite(fd, piece, offset)
        piece = piece[n:]
        offset = None if offset is None else offset + n
    return []


def _finish(fd: int, mode: int, mtime: float) -> None:
    os.fchmod(fd, mode & 0o777)  # never setuid/setgid from an archive
    os.utime(fd, (mtime, mtime))


@dataclass
class _Job:
    """Writes in the pool: a batch of small files, or a chunk of a large one."""

    start: int  # stream offset of its first byte: blocks from here on are still held
    future: Future[list[str]]  # the SHA-256 of each of ``files``
    files: list[tuple[str, int]]  # (name, size) of the files it completes
    finish: tuple[int, int, float] | None = None  # a large file's (fd, mode, mtime), to close


class _Extractor:
    def __init__(self, staging: Path, progress: Progress):
        self.root, self.progress = str(staging), progress
        self.entries: dict[str, Entry] = {}
        self.manifest: dict[str, Entry] | None = None
        self.dirs: set[str] = {""}  # made, by a member or as a parent
        self.dir_modes: list[tuple[str, int]] = []
        self.data_bytes = 0
        self.pool = ThreadPoolExecutor(_WRITERS, thread_name_prefix="restore-writer")
        # A large file's chunks are written one after another, by one thread:
        # writers of one file only wait for each other (the inode's lock).
        self.ordered = ThreadPoolExecutor(1, thread_name_prefix="restore-large")
        self.jobs: deque[_Job] = deque()
        self.batch: list[tuple[str, list[memoryview], int, float]] = []
        self.batch_job = _Job(0, _done([]), [])
        self.batch_bytes = 0
        self.waiting: set[str] = set()  # files whose write is not done yet
        self.open_fds: set[int] = set()
        self.stream: _Stream | None = None

    def run(self, stream: _Stream) -> None:
        self.stream = stream
        extensions = tarformat.Extensions()
        while True:
            start = stream.offset
            block = stream.header()
            if len(block) < BLOCK:
                raise safety.refuse("", "truncated archive: no end-of-archive marker")
            if tarformat.is_end(block):
                return
            kind = block[156:157]
            if extensions.takes(kind):
                size = tarformat.parse(block)[2]
                extensions.check_size(size)
                extensions.add(kind, stream.take(size))
            else:
                member = extensions.apply(block)
                self.member(member, start)
                size = member.size
            stream.skip(len(tarformat.padding(size)))

    def member(self, m: Member, start: int) -> None:
        assert self.stream is not None
        if self.manifest is not None:
            raise safety.refuse(m.name, "a member after the manifest")
        if m.name in (MANIFEST, "./" + MANIFEST) and m.kind == tarformat.REG:
            self.manifest = self._manifest(m)
            return
        rel = safety.member_path(m.name)
        self._check_place(rel, m.kind)
        target = os.path.join(self.root, rel)
        if m.kind in (tarformat.REG, tarformat.DIR, tarformat.SYMLINK, tarformat.HARDLINK):
            self._make_dir(rel.rpartition("/")[0])
        if m.kind == tarformat.REG and m.size <= _SMALL_FILE:
            self._small(m, rel, target, start)
        elif m.kind == tarformat.REG:
            self._large(m, rel, target)
        elif m.kind == tarformat.DIR:
            self._make_dir(rel)
            self.dir_modes.append((target, m.mode & 0o7777))
            self.entries[rel] = {"type": "dir"}
        elif m.kind == tarformat.SYMLINK:
            safety.symlink_target(rel, m.link)
            os.symlink(m.link, target)
            self.entries[rel] = {"type": "symlink", "target": m.link}
        elif m.kind == tarformat.HARDLINK:
            source = safety.member_path(m.link)
            self.settle(until_bytes=_INFLIGHT_BYTES, name=source)  # the file must exist before it is linked
            if self.entries.get(source, {}).get("type") != "file":
                raise safety.refuse(rel, f"hardlink to {m.link!r}, not a file extracted before it")
            os.link(os.path.join(self.root, source), target, follow_symlinks=False)
            self.entries[rel] = dict(self.entries[source])
        else:
            raise safety.refuse(rel, "device, fifo or other special file")

    def _small(self, m: Member, rel: str, target: str, start: int) -> None:
        assert self.stream is not None
        if self.batch and os.path.dirname(target) != os.path.dirname(self.batch[0][0]):
            # A batch per directory: writers creating files in one directory
            # only take turns at its lock.
            self._submit_batch()
        if not self.batch:
            self.batch_job = _Job(start, _done([]), [])
        self.batch.append((target, list(self.stream.pieces(m.size)), m.mode, m.mtime))
        self.batch_job.files.append((rel, m.size))
        self.batch_bytes += m.size
        self._pending(rel)
        self.data_bytes += m.size
        self.progress.advance(m.size)
        self.progress.files_done += 1
        if len(self.batch) >= _BATCH_FILES or self.batch_bytes >= _BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if self.batch:
            self.settle(until_bytes=_INFLIGHT_BYTES)
            self.batch_job.future = self.pool.submit(_write_files, self.batch)
            self.jobs.append(self.batch_job)
            self.batch, self.batch_bytes = [], 0

    def _large(self, m: Member, rel: str, target: str) -> None:
        assert self.stream is not None
        self._submit_batch()  # the jobs stay in stream order
        sha, offset = hashlib.sha256(), 0
        fd = os.open(target, _CREATE, 0o600)
        self.open_fds.add(fd)
        for piece in self.stream.pieces(m.size, _CHUNK):
            sha.update(piece)
            self.settle(until_bytes=_INFLIGHT_BYTES)
            self.jobs.append(_Job(self.stream.offset - len(piece),
                                  self.ordered.submit(_write_all, fd, piece, offset), []))
            offset += len(piece)
            self.progress.advance(len(piece))
        self.jobs.append(_Job(self.stream.offset, _done([sha.hexdigest()]), [(rel, m.size)],
                              (fd, m.mode, m.mtime)))
        self._pending(rel)
        self.data_bytes += m.size
        self.progress.files_done += 1

    def _pending(self, rel: str) -> None:
        self.waiting.add(rel)
        self.entries[rel] = {"type": "pending"}

    def settle(self, until_bytes: int = -1, name: str | None = None) -> None:
        """Finish writes (all; or until the blocks they hold are at most
        ``until_bytes`` of the stream; or until ``name`` is written) and record
        their hashes."""
        if until_bytes < 0 or name in self.waiting:
            self._submit_batch()
        offset = self.stream.offset if self.stream else 0
        while self.jobs and (offset - self.jobs[0].start > until_bytes or name in self.waiting):
            job = self.jobs.popleft()
            digests = job.future.result()  # re-raises the worker's error here
            if job.finish is not None:
                fd, mode, mtime = job.finish
                self.open_fds.discard(fd)
                try:
                    _finish(fd, mode, mtime)
                finally:
                    os.close(fd)
            for (rel, size), digest in zip(job.files, digests, strict=True):
                self.waiting.discard(rel)
                self.entries[rel] = {"type": "file", "size": size, "sha256": digest}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.ordered.shutdown(wait=True, cancel_futures=True)
        for fd in self.open_fds:
            os.close(fd)

    def _check_place(self, rel: str, kind: bytes) -> None:
        if rel in self.entries:
            raise safety.refuse(rel, "appears twice")
        if rel in self.dirs and kind != tarformat.DIR:
            raise safety.refuse(rel, "not a directory, but earlier members are inside it")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = self.entries.get("/".join(parts[:i]))
            if parent is not None and parent["type"] != "dir":
                # Writing through a symlink member is how archives escape.
                raise safety.refuse(rel, f"inside {'/'.join(parts[:i])!r}, which is a {parent['type']}")

    def _make_dir(self, rel: str) -> None:
        if rel in self.dirs:
            return
        os.makedirs(os.path.join(self.root, rel), mode=0o700, exist_ok=True)
        while rel and rel not in self.dirs:  # it and its parents
            self.dirs.add(rel)
            rel = rel.rpartition("/")[0]

    def _manifest(self, m: Member) -> dict[str, Entry]:
        assert self.stream is not None
        if m.size > _MAX_MANIFEST:
            raise safety.refuse(m.name, "unreadable manifest")
        try:
            data = json.loads(self.stream.take(m.size))
            entries = data["entries"]
            if data.get("version") != 1 or not isinstance(entries, dict):
                raise ValueError("unknown manifest version")
        except (ValueError, KeyError, TypeError) as exc:
            raise safety.refuse(m.name, f"bad manifest: {exc}") from exc
        return entries

    def verify(self) -> None:
        if self.manifest is None:
            raise safety.refuse(MANIFEST, "no manifest: a truncated archive, or not a gameplane backup")
        if self.entries == self.manifest:
            return
        for name in sorted(set(self.entries) | set(self.manifest)):
            got, want = self.entries.get(name), self.manifest.get(name)
            if got != want:
                raise safety.refuse(name, f"does not match the manifest: got {got}, manifest says {want}")

    def finish_dirs(self) -> None:
        # Deepest first, after every file is in: a read-only dir could not have been filled.
        for path, mode in reversed(self.dir_modes):
            os.chmod(path, mode & 0o777)


def _done(result: list[str]) -> Future[list[str]]:
    future: Future[list[str]] = Future()
    future.set_result(result)
    return future


def extract_archive(fh: IO[bytes], staging: Path, progress: Progress) -> tuple[str, int]:
    """Extract and verify into ``staging``; answer the archive's sha256 and data bytes."""
    reader = _Reader(fh)
    extractor = _Extractor(staging, progress)
    try:
        extractor.run(_Stream(reader))
        reader.drain()
        extractor.settle()
    except zstandard.ZstdError as exc:
        raise safety.refuse("", f"unreadable archive: {exc}") from exc
    finally:
        extractor.close()
        reader.close()
    extractor.verify()
    extractor.finish_dirs()
    return reader.sha.hexdigest(), extractor.data_bytes
