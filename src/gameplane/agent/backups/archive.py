"""The default engine: one ``<id>.tar.zst`` per backup in the instance's
``backups/`` dir.

The archive is a plain tar (any ``tar -I zstd -xf`` reads it) whose last
member, ``.gameplane-manifest.json``, lists every entry with its type and,
for regular files, size and SHA-256. Each file is read once: the same chunk
is hashed and written to a multi-threaded zstd stream. The archive is
written to a temp name, fsynced and renamed, so a record marked completed
always has its whole archive.

A restore reads the stream once too: every member is checked
(``safety``) before anything is written for it, every file is hashed as it
is written into the staging dir, and the result must equal the manifest
exactly (same entries, same hashes) and the archive its recorded SHA-256.
Small files are hashed and written by a few threads (hashing and writing
release the GIL) while the tar stream is parsed on: a world is mostly small
files, and doing their syscalls one after another kept restores well below
tar's speed. What is in flight is bounded (``_INFLIGHT_BYTES``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import stat
import tarfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import zstandard

from gameplane.agent.backups import safety
from gameplane.agent.backups.engine import BackupFailed, Progress, Source
from gameplane.agent.backups.records import BackupRecord, RecordStore

MANIFEST = ".gameplane-manifest.json"
CHUNK = 1 << 20
_MAX_MANIFEST = 256 << 20
_SMALL_FILE = 4 << 20  # read whole and written by a worker thread
_INFLIGHT_BYTES = 64 << 20
_WRITERS = 4
Entry = dict[str, Any]


class _HashingWriter:
    """The archive file, hashed and counted as the compressor writes it."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _DecompressingReader(io.RawIOBase):
    """The decompressed stream, produced by a thread of its own: zstd then runs
    while this thread hashes and writes files (as ``tar -I zstd`` runs two
    processes). The compressed bytes are hashed on the way."""

    def __init__(self, fh: IO[bytes]):
        self.sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._chunk, self._pos = memoryview(b""), 0
        self._thread = threading.Thread(target=self._produce, args=(fh,), daemon=True)
        self._thread.start()

    def _produce(self, fh: IO[bytes]) -> None:
        item: bytes | BaseException | None = None
        try:
            tee: Any = _Tee(fh, self.sha)
            reader = zstandard.ZstdDecompressor().stream_reader(tee, read_size=CHUNK)
            while not self._stop.is_set() and (block := reader.read(4 * CHUNK)):
                self._put(block)
        except BaseException as exc:  # handed to the reading thread
            item = exc
        self._put(item)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._chunk):
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self._queue.put(None)  # stay at EOF for further reads
                return b""
            self._chunk, self._pos = memoryview(item), 0
        end = len(self._chunk) if size < 0 else self._pos + size
        out = bytes(self._chunk[self._pos:end])
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._stop.set()
        super().close()


class _Tee:
    def __init__(self, raw: IO[bytes], sha: Any):
        self.raw, self.sha = raw, sha

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        return data


class _TarWriter:
    """Just enough tar writing: headers from ``tarfile``, data copied in big chunks
    (``tarfile``'s own stream mode re-slices its buffer for every write)."""

    def __init__(self, out: Any):
        self.out = out
        self.buf = bytearray(CHUNK)

    def header(self, info: tarfile.TarInfo) -> None:
        self.out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def file(self, info: tarfile.TarInfo, fh: IO[bytes], progress: Progress) -> str:
        self.header(info)
        sha, view, left = hashlib.sha256(), memoryview(self.buf), info.size
        while left:
            n = fh.readinto(view[:min(left, CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise BackupFailed("file_changed", {"path": info.name,
                                                    "reason": "it shrank while being copied"})
            sha.update(view[:n])
            self.out.write(view[:n])
            left -= n
            progress.advance(n)
        self._pad(info.size)
        return sha.hexdigest()

    def data(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(payload), 0o600
        self.header(info)
        self.out.write(payload)
        self._pad(len(payload))

    def _pad(self, size: int) -> None:
        if size % tarfile.BLOCKSIZE:
            self.out.write(bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        self.out.write(bytes(2 * tarfile.BLOCKSIZE))


def _info(rel: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    return info


def write_archive(target: IO[bytes], source: Source, progress: Progress, threads: int = -1,
                  level: int = 3) -> tuple[int, str]:
    """Write the tar.zst of ``source`` to ``target``; answer (size, sha256) of the archive."""
    out = _HashingWriter(target)
    entries: dict[str, Entry] = {}
    compressor = zstandard.ZstdCompressor(level=level, threads=threads)
    with compressor.stream_writer(out, closefd=False, write_size=CHUNK) as z:  # type: ignore[arg-type]
        tar = _TarWriter(z)
        for rel, full, st in source.entries():
            if rel == MANIFEST:
                continue
            info = _info(rel, st)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb", buffering=0) as fh:
                    info.size = os.fstat(fh.fileno()).st_size
                    digest = tar.file(info, fh, progress)
                entries[rel] = {"type": "file", "size": info.size, "sha256": digest}
                progress.files_done += 1
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.header(info)
                entries[rel] = {"type": "dir"}
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
                tar.header(info)
                entries[rel] = {"type": "symlink", "target": info.linkname}
            # Sockets and fifos in a data dir are runtime objects: not part of a world.
        tar.data(MANIFEST, json.dumps({"version": 1, "entries": entries}).encode())
        tar.close()
    return out.size, out.sha.hexdigest()


def extract_archive(fh: IO[bytes], staging: Path, progress: Progress) -> tuple[str, int]:
    """Extract and verify into ``staging``; answer the archive's sha256 and data bytes."""
    reader = _DecompressingReader(fh)
    extractor = _Extractor(staging, progress)
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=1 << 16) as tar:
            for member in tar:
                extractor.member(tar, member)
            # Read to the end of the zstd frame so the whole file is hashed.
            while reader.read(CHUNK):
                pass
        extractor.settle()
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise safety.refuse("", f"unreadable archive: {exc}") from exc
    finally:
        extractor.close()
        reader.close()
    extractor.verify()
    extractor.finish_dirs()
    return reader.sha.hexdigest(), extractor.data_bytes


def _write_file(target: str, data: bytes, mode: int, mtime: float) -> str:
    """Create one staging file (never through a symlink, never over a file)
    and answer its SHA-256: runs in a writer thread."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode & 0o777)  # never setuid/setgid from an archive
    finally:
        os.close(fd)
    os.utime(target, (mtime, mtime))
    return hashlib.sha256(data).hexdigest()


class _Extractor:
    def __init__(self, staging: Path, progress: Progress):
        self.root, self.progress = staging, progress
        self.entries: dict[str, Entry] = {}
        self.manifest: dict[str, Entry] | None = None
        self.dir_modes: list[tuple[str, int]] = []
        self.data_bytes = 0
        self.buf = bytearray(CHUNK)
        self.pool = ThreadPoolExecutor(_WRITERS, thread_name_prefix="restore-writer")
        self.pending: deque[tuple[str, int, Future[str]]] = deque()
        self.pending_names: set[str] = set()
        self.inflight = 0

    def settle(self, until_bytes: int = 0, name: str | None = None) -> None:
        """Wait for written files (all, or until at most ``until_bytes`` are in
        flight, or until ``name`` is written) and record their hashes."""
        while self.pending and (self.inflight > until_bytes or name in self.pending_names):
            rel, size, future = self.pending.popleft()
            digest = future.result()  # re-raises the worker's error here
            self.inflight -= size
            self.pending_names.discard(rel)
            self.entries[rel] = {"type": "file", "size": size, "sha256": digest}
            if name == rel:
                return

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if self.manifest is not None:
            raise safety.refuse(m.name, "a member after the manifest")
        if m.name in (MANIFEST, "./" + MANIFEST) and m.isreg():
            self.manifest = self._manifest(tar, m)
            return
        rel = safety.member_path(m.name)
        self._check_place(rel)
        target = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        if m.isreg() and not m.issparse() and m.size <= _SMALL_FILE:
            src = tar.extractfile(m)
            assert src is not None
            data = src.read(m.size)
            if len(data) != m.size:
                raise safety.refuse(m.name, "truncated")
            self.settle(until_bytes=_INFLIGHT_BYTES - m.size)
            self.pending.append((rel, m.size, self.pool.submit(_write_file, target, data, m.mode, m.mtime)))
            self.pending_names.add(rel)
            self.entries[rel] = {"type": "pending"}
            self.inflight += m.size
            self._count(m.size)
        elif m.isreg() and not m.issparse():
            digest = self._write(tar, m, target)
            self.entries[rel] = {"type": "file", "size": m.size, "sha256": digest}
        elif m.isdir():
            os.makedirs(target, mode=0o700, exist_ok=True)
            self.dir_modes.append((target, m.mode & 0o7777))
            self.entries[rel] = {"type": "dir"}
        elif m.issym():
            safety.symlink_target(rel, m.linkname)
            os.symlink(m.linkname, target)
            self.entries[rel] = {"type": "symlink", "target": m.linkname}
        elif m.islnk():
            source = safety.member_path(m.linkname)
            self.settle(until_bytes=_INFLIGHT_BYTES, name=source)  # the file must exist before it is linked
            if self.entries.get(source, {}).get("type") != "file":
                raise safety.refuse(rel, f"hardlink to {m.linkname!r}, not a file extracted before it")
            os.link(os.path.join(self.root, source), target, follow_symlinks=False)
            self.entries[rel] = dict(self.entries[source])
        else:
            raise safety.refuse(rel, "device, fifo or other special file")

    def _check_place(self, rel: str) -> None:
        if rel in self.entries:
            raise safety.refuse(rel, "appears twice")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = self.entries.get("/".join(parts[:i]))
            if parent is not None and parent["type"] != "dir":
                # Writing through a symlink member is how archives escape.
                raise safety.refuse(rel, f"inside {'/'.join(parts[:i])!r}, which is a {parent['type']}")

    def _write(self, tar: tarfile.TarFile, m: tarfile.TarInfo, target: str) -> str:
        src = tar.extractfile(m)
        assert src is not None
        sha, view, left = hashlib.sha256(), memoryview(self.buf), m.size
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb", buffering=0) as out:
            while left:
                n = src.readinto(view[:min(left, CHUNK)])  # type: ignore[attr-defined]
                if not n:
                    raise safety.refuse(m.name, "truncated")
                sha.update(view[:n])
                out.write(view[:n])
                left -= n
                self.progress.advance(n)
            os.fchmod(fd, m.mode & 0o777)  # never setuid/setgid from an archive
        os.utime(target, (m.mtime, m.mtime))
        self._count(0)
        self.data_bytes += m.size
        return sha.hexdigest()

    def _count(self, nbytes: int) -> None:
        self.data_bytes += nbytes
        self.progress.advance(nbytes)
        self.progress.files_done += 1

    @staticmethod
    def _manifest(tar: tarfile.TarFile, m: tarfile.TarInfo) -> dict[str, Entry]:
        src = tar.extractfile(m)
        if src is None or m.size > _MAX_MANIFEST:
            raise safety.refuse(m.name, "unreadable manifest")
        try:
            data = json.loads(src.read())
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
