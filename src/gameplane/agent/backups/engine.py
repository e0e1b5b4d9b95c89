"""What every backup engine offers, the files a backup takes from the data
dir, and the progress counters a running operation updates from its thread."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from gameplane.agent.backups.records import BackupRecord
from gameplane.agent.files.datadir import TEMP_PREFIX
from gameplane.errors import GameplaneError


class BackupFailed(GameplaneError):
    """An engine could not do its job; ``details`` says why (recorded as the backup's error)."""

    status = 500
    code = "backup_failed"


class Progress:
    """Counters written by the worker thread and read by ``/status``: plain
    attribute stores, safe under the GIL. A new ``stage`` calls ``on_stage``
    (which bumps the status ``seq``); byte counts do not, or every chunk would
    be an event for the API."""

    def __init__(self, operation: str, backup_id: str, on_stage: Callable[[], None] = lambda: None):
        self.operation = operation
        self.backup_id = backup_id
        self.stage = "pending"
        self.status = "running"
        self.bytes_done = 0
        self.bytes_total: int | None = None
        self.files_done = 0
        self.error: str | None = None
        self._on_stage = on_stage

    def set_stage(self, stage: str, bytes_total: int | None = None) -> None:
        self.stage, self.bytes_done, self.files_done, self.bytes_total = stage, 0, 0, bytes_total
        self._on_stage()

    def advance(self, nbytes: int) -> None:
        self.bytes_done += nbytes

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "backupId": self.backup_id, "stage": self.stage,
                "status": self.status, "bytesDone": self.bytes_done, "bytesTotal": self.bytes_total,
                "filesDone": self.files_done, "error": self.error}


@dataclass(frozen=True)
class Source:
    """The template's ``backup.paths`` inside one data dir."""

    data_dir: Path
    paths: tuple[str, ...]

    def existing(self) -> list[str]:
        return [p for p in self.paths if os.path.lexists(self.data_dir / p)]

    def entries(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """(relative name, absolute path, lstat) of every entry, parents first,
        in a stable order, each once, never following a symlink."""
        seen: set[str] = set()
        for path in sorted(self.paths):
            top = os.path.normpath(self.data_dir / path)
            try:
                st = os.lstat(top)
            except FileNotFoundError:
                continue
            if top != os.path.normpath(self.data_dir):
                yield from _once(self._rel(top), top, st, seen)
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk(top, seen)

    def _walk(self, directory: str, seen: set[str]) -> Iterator[tuple[str, str, os.stat_result]]:
        with os.scandir(directory) as it:
            # An upload under way is not part of the world until it is renamed in.
            children = sorted((e for e in it if not e.name.startswith(TEMP_PREFIX)), key=lambda e: e.name)
        for child in children:
            st = child.stat(follow_symlinks=False)
            yield from _once(self._rel(child.path), child.path, st, seen)
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk(child.path, seen)

    @cached_property
    def _root(self) -> str:
        return os.path.normpath(self.data_dir) + "/"

    def _rel(self, path: str) -> str:
        if path.startswith(self._root):  # a path scandir made: nothing to normalize (relpath is slow)
            return path[len(self._root):]
        return os.path.relpath(path, self.data_dir)

    def covers(self, rel: str) -> bool:
        """Whether ``rel`` (relative to the data dir) is inside a backed-up path."""
        for path in self.paths:
            norm = os.path.normpath(path)
            if norm == "." or rel == norm or rel.startswith(norm + "/"):
                return True
        return False

    def total_bytes(self) -> int:
        return sum(st.st_size for _, _, st in self.entries() if stat.S_ISREG(st.st_mode))


def _once(rel: str, full: str, st: os.stat_result,
          seen: set[str]) -> Iterator[tuple[str, str, os.stat_result]]:
    if rel not in seen:
        seen.add(rel)
        yield rel, full, st


class Engine(Protocol):
    """One way of storing backups. Methods block (they run in a worker thread)
    and fill in or read the record; failures raise ``BackupFailed`` or
    ``invalid_archive``."""

    name: str

    def create(self, record: BackupRecord, source: Source, progress: Progress) -> None: ...

    def restore(self, record: BackupRecord, staging: Path, progress: Progress) -> None:
        """Write the backup's files into the empty dir ``staging`` and verify them."""

    def delete(self, record: BackupRecord) -> None: ...

    def download(self, record: BackupRecord) -> tuple[Iterator[bytes], str, str]:
        """Chunks of one archive of the backup, its media type and a file name."""
