"""Race-free access to an instance's data dir for the file manager.

The workload is untrusted and writes into the same tree, so a path checked
by name could be swapped for a symlink between the check and the use. Every
operation therefore walks the path one component at a time through directory
file descriptors opened with ``O_NOFOLLOW | O_DIRECTORY`` and acts on the
last component relative to its parent's descriptor (``*at`` calls): a
symlink anywhere, even one created a microsecond ago, makes the walk fail
instead of leading out. Files are opened ``O_NOFOLLOW | O_NONBLOCK`` and
checked with ``fstat`` on the opened descriptor, so a FIFO never hangs the
agent and nothing but a regular file is ever read.

Rules (docs/agent.md, "Files"):

* paths are relative to the data dir, ``/``-separated; ``""`` or ``"."`` is
  the data dir itself (listing only); absolute paths, ``..``, NUL, control
  characters, backslashes, over-long names, Windows device names (``CON``,
  ``NUL``, ``COM1``…, so a download is never a file Windows cannot save) and
  the upload temp prefix are ``400 invalid_path``;
* a symlink in any component is ``400 invalid_path`` (``reason: symlink``);
  FIFOs, sockets and devices are ``409 not_a_regular_file``; the listing
  leaves both out (the file manager shows what it can open);
* deleting a directory deletes it with its contents (``shutil.rmtree`` on
  a descriptor, which never follows a symlink).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gameplane.agent.backups.records import iso_utc
from gameplane.errors import BadRequest, Conflict, NotFound

MAX_PATH = 4096
MAX_NAME = 255
#: uploads in progress are written next to their target under this prefix
TEMP_PREFIX = ".gameplane-upload-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_WINDOWS_DEVICE = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)(\..*)?$",
                             re.IGNORECASE)
READ_CHUNK = 1 << 20
DIR_MODE = 0o750
FILE_MODE = 0o640


def invalid(path: str, reason: str) -> BadRequest:
    return BadRequest("invalid_path", {"path": path, "reason": reason})


def split_path(path: str, *, allow_root: bool = False) -> list[str]:
    """The components of a relative path, or ``400 invalid_path`` saying why not."""
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise invalid(path[:200], f"longer than {MAX_PATH} bytes")
    if _CONTROL.search(path):
        raise invalid(path, "control characters, NUL and backslashes are not allowed")
    if path.startswith("/"):
        raise invalid(path, "absolute paths are not allowed: paths are relative to the data dir")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise invalid(path, "'..' is not allowed")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise invalid(path, f"a name longer than {MAX_NAME} bytes")
        if _WINDOWS_DEVICE.match(part):
            raise invalid(path, f"{part!r} is a device name")
        if part.startswith(TEMP_PREFIX):
            raise invalid(path, f"names starting with {TEMP_PREFIX!r} are reserved for uploads")
    if not parts and not allow_root:
        raise invalid(path, "names the data dir itself")
    return parts


class Walk:
    """Descriptors of the data dir and of a path's parent directory; close after use."""

    def __init__(self, root_fd: int, parent_fd: int, name: str | None):
        self.root_fd = root_fd
        self.parent_fd = parent_fd
        self.name = name  # the last component; None for the data dir itself

    def close(self) -> None:
        for fd in {self.root_fd, self.parent_fd}:
            os.close(fd)

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DataDir:
    def __init__(self, root: Path, uid: int | None):
        self.root = root
        # Files the agent creates belong to the workload's user, as its own do.
        self.uid = uid if uid is not None and os.geteuid() == 0 else None

    # -- walking ---------------------------------------------------------------------------
    def walk(self, path: str, parts: list[str], *, create: bool = False) -> Walk:
        """Descriptors down to the parent of ``parts[-1]`` (creating missing
        directories with ``create``); for no parts, the data dir itself."""
        try:
            root_fd = os.open(self.root, _DIR_FLAGS)
        except FileNotFoundError:
            raise NotFound("not_found", {"path": path, "reason": "the data dir does not exist"}) from None
        fd = root_fd
        try:
            for part in parts[:-1]:
                fd = self._enter(fd, root_fd, part, path, create)
        except BaseException:
            if fd != root_fd:
                os.close(fd)
            os.close(root_fd)
            raise
        return Walk(root_fd, fd, parts[-1] if parts else None)

    def _enter(self, fd: int, root_fd: int, part: str, path: str, create: bool) -> int:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise NotFound("not_found", {"path": path}) from None
            # Made meanwhile (by the workload or another upload): open what is there.
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, DIR_MODE, dir_fd=fd)
            child = self._open_dir(fd, part, path)
            if self.uid is not None:
                os.fchown(child, self.uid, self.uid)
        except OSError as exc:
            raise _translate(exc, path, part, fd) from exc
        if fd != root_fd:
            os.close(fd)
        return child

    @staticmethod
    def _open_dir(fd: int, part: str, path: str) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _translate(exc, path, part, fd) from exc

    def kind(self, walk: Walk, path: str) -> os.stat_result:
        """``lstat`` of the last component; 404 if it is not there."""
        assert walk.name is not None
        try:
            return os.stat(walk.name, dir_fd=walk.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise NotFound("not_found", {"path": path}) from None

    # -- operations --------------------------------------------------------------------------
    def listing(self, path: str) -> list[dict[str, Any]]:
        parts = split_path(path, allow_root=True)
        with self.walk(path, parts) as walk:
            fd = walk.parent_fd if walk.name is None else self._open_dir(walk.parent_fd, walk.name, path)
            try:
                entries = []
                with os.scandir(fd) as it:
                    for entry in it:
                        entry_stat = _entry(entry)
                        if entry_stat is not None:
                            entries.append(entry_stat)
            finally:
                if fd != walk.parent_fd:
                    os.close(fd)
        # Folders first, then by name, as file managers show them.
        entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
        return entries

    def open_file(self, path: str) -> tuple[int, int, str]:
        """A descriptor of the regular file at ``path``, its size and its name."""
        parts = split_path(path)
        with self.walk(path, parts) as walk:
            assert walk.name is not None
            found = self.kind(walk, path)
            _regular(found, path)
            try:
                fd = os.open(walk.name, _FILE_FLAGS, dir_fd=walk.parent_fd)
            except OSError as exc:
                raise _translate(exc, path, walk.name) from exc
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped between the lstat and the open
            os.close(fd)
            _regular(opened, path)
        return fd, opened.st_size, walk.name

    def delete(self, path: str) -> None:
        parts = split_path(path)
        with self.walk(path, parts) as walk:
            assert walk.name is not None
            found = self.kind(walk, path)
            if stat.S_ISDIR(found.st_mode):
                # rmtree on a descriptor: it never follows a symlink, at any depth.
                shutil.rmtree(walk.name, dir_fd=walk.parent_fd)
                return
            _regular(found, path)
            os.unlink(walk.name, dir_fd=walk.parent_fd)

    def size_of(self, walk: Walk, path: str) -> int:
        """The size of the file an upload would replace (0 if none); an upload
        replaces only a regular file, never a folder, symlink or FIFO."""
        assert walk.name is not None
        try:
            found = os.stat(walk.name, dir_fd=walk.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        _regular(found, path)
        return found.st_size

    def is_current(self, walk: Walk) -> bool:
        """Whether the descriptor still is the data dir (a restore swaps the dir
        for another: an upload finishing into the old one would be lost)."""
        try:
            return os.path.samestat(os.fstat(walk.root_fd), os.stat(self.root, follow_symlinks=False))
        except FileNotFoundError:
            return False


def chunks_of(fd: int) -> Iterator[bytes]:
    """The file's bytes in chunks; the descriptor is closed at the end (or
    when the consumer drops the generator, e.g. on a client disconnect)."""
    try:
        while chunk := os.read(fd, READ_CHUNK):
            yield chunk
    finally:
        os.close(fd)


def sweep_uploads(root: Path, older_than: float) -> int:
    """Remove upload temp files a killed agent left behind (last written before
    ``older_than``, this agent's start: an upload under way writes on); the
    count removed. It walks the whole data dir, so the agent runs it in the
    background once its instances are back, not before."""
    removed = 0
    if not root.is_dir():
        return 0
    for _, _, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in filenames:
            if not name.startswith(TEMP_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mtime < older_than:
                    os.unlink(name, dir_fd=dirfd)
                    removed += 1
    return removed


def _entry(entry: os.DirEntry[str]) -> dict[str, Any] | None:
    if entry.name.startswith(TEMP_PREFIX):
        return None
    try:
        found = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # removed while listing
    if stat.S_ISDIR(found.st_mode):
        kind, size = "dir", None
    elif stat.S_ISREG(found.st_mode):
        kind, size = "file", found.st_size
    else:
        return None  # symlinks and special files: see the module doc
    return {"name": entry.name, "type": kind, "sizeBytes": size, "modifiedAt": iso_utc(found.st_mtime)}


def _regular(found: os.stat_result, path: str) -> None:
    if stat.S_ISDIR(found.st_mode):
        raise Conflict("is_a_directory", {"path": path})
    if stat.S_ISLNK(found.st_mode):
        raise invalid(path, "symlink: the file manager does not follow symlinks")
    if not stat.S_ISREG(found.st_mode):
        raise Conflict("not_a_regular_file", {"path": path, "reason": "a FIFO, socket or device"})


def _translate(exc: OSError, path: str, part: str, dir_fd: int | None = None) -> Exception:
    if exc.errno == errno.ENOTDIR and dir_fd is not None and _is_symlink(part, dir_fd):
        exc = OSError(errno.ELOOP, "a symlink")  # O_DIRECTORY may win over O_NOFOLLOW
    if exc.errno == errno.ELOOP:
        return invalid(path, f"symlink: {part!r}; the file manager does not follow symlinks")
    if exc.errno == errno.ENOTDIR:
        return Conflict("not_a_directory", {"path": path, "component": part})
    if exc.errno == errno.ENOENT:
        return NotFound("not_found", {"path": path})
    if exc.errno == errno.ENXIO:  # a socket
        return Conflict("not_a_regular_file", {"path": path, "reason": "a FIFO, socket or device"})
    return exc


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
