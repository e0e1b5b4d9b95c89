"""One instance's backups: create, restore, delete, lock, retention, and what
a killed agent left behind.

Each backup or restore runs in the background under the supervisor's claim
(``backup`` / ``restore``), so there is one at a time per instance and power
actions answer ``409 busy`` meanwhile. Their progress is the ``progress``
object of ``/status``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gameplane.agent.backups import swap
from gameplane.agent.backups.archive import ArchiveEngine
from gameplane.agent.backups.engine import BackupFailed, Engine, Progress, Source
from gameplane.agent.backups.records import (
    BackupRecord,
    RecordStore,
    new_backup_id,
)
from gameplane.agent.backups.restic import ResticRepository
from gameplane.agent.supervisor import Supervisor
from gameplane.errors import Conflict, GameplaneError, InsufficientStorage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupSettings:
    """The agent's backup options (``--backup-*``); a template's ``[backup]`` wins."""

    engine: str = "archive"
    restic: ResticRepository | None = None
    keep: int | None = None
    keep_days: float | None = None
    min_free: int = 64 << 20  # bytes that must stay free after a backup or restore


class BackupManager:
    def __init__(self, sup: Supervisor, settings: BackupSettings):
        self.sup = sup
        self.files = sup.files
        self.settings = settings
        self.store = RecordStore(self.files.paths.backups)
        self._restoring: str | None = None

    # -- engines -------------------------------------------------------------------
    def engine(self, name: str) -> Engine:
        if name == "archive":
            return ArchiveEngine(self.store, self.files.id)
        if name == "restic":
            if self.settings.restic is None:
                raise BackupFailed("engine_unavailable", {"engine": name,
                                                          "reason": "no restic repository configured"})
            return self.settings.restic.engine(self.files.id)
        raise BackupFailed("engine_unavailable", {"engine": name})

    @property
    def default_engine(self) -> str:
        return self.files.template.backup.engine or self.settings.engine

    def source(self) -> Source:
        return Source(self.files.paths.data, tuple(self.files.template.backup.paths))

    # -- queries ---------------------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in reversed(self.store.load_all())]

    def completed(self, backup_id: str) -> BackupRecord:
        record = self.store.get(backup_id)
        if record.status != "completed":
            raise Conflict("backup_not_completed", {"id": backup_id, "status": record.status})
        return record

    def download(self, backup_id: str) -> tuple[Iterator[bytes], str, str]:
        record = self.completed(backup_id)
        return self.engine(record.engine).download(record)

    # -- requests (answer at once, work in the background) ------------------------------
    async def request_backup(self, name: str | None) -> BackupRecord:
        self._not_busy()
        self.engine(self.default_engine)  # an unusable engine is refused now, not later
        await self._check_space(await asyncio.to_thread(self.source().total_bytes))
        self._not_busy()  # the size walk awaited: someone may have claimed meanwhile
        now = time.time()
        default_name = f"backup {time.strftime('%Y-%m-%d %H:%M', time.gmtime(now))}"
        record = BackupRecord(id=new_backup_id(now), name=name or default_name,
                              engine=self.default_engine, created_at=now)
        self.store.save(record)

        async def work() -> None:
            progress = self._progress("backup", record.id)
            await self._backup(record, progress)
            progress.status = record.status
            progress.error = record.error
            await self._retention()

        self.sup.begin("backup", work, crash_on_error=False)
        return record

    async def request_restore(self, backup_id: str) -> dict[str, Any]:
        record = self.completed(backup_id)
        self._not_busy()
        current = await asyncio.to_thread(self.source().total_bytes)
        # Room for the safety backup and the restored tree side by side.
        await self._check_space(current + (record.data_bytes or record.size_bytes or 0))
        self._not_busy()
        self.sup.begin("restore", lambda: self._restore(record), crash_on_error=False)
        return {"backupId": record.id, "status": "pending"}

    def delete(self, backup_id: str) -> None:
        record = self.store.get(backup_id)
        if record.locked:
            raise Conflict("backup_locked", {"id": backup_id})
        if record.status in ("pending", "running") or self._restoring == backup_id:
            raise Conflict("busy", {"operation": self.sup.busy, "id": backup_id})
        self._delete(record)

    def set_locked(self, backup_id: str, locked: bool) -> BackupRecord:
        record = self.store.get(backup_id)
        record.locked = locked
        self.store.save(record)
        return record

    def _not_busy(self) -> None:
        if self.sup.busy is not None:
            raise Conflict("busy", {"operation": self.sup.busy})

    async def _check_space(self, needed: int) -> None:
        self.store.ensure()
        free = (await asyncio.to_thread(shutil.disk_usage, self.store.dir)).free
        if free - needed < self.settings.min_free:
            raise InsufficientStorage(details={"freeBytes": free, "neededBytes": needed,
                                               "reserveBytes": self.settings.min_free})

    def _progress(self, operation: str, backup_id: str) -> Progress:
        progress = Progress(operation, backup_id, self.sup.bump)
        self.sup.progress = progress.to_json
        self.sup.bump()
        return progress

    # -- backup --------------------------------------------------------------------------
    async def _backup(self, record: BackupRecord, progress: Progress) -> None:
        """Take one backup under an existing claim; the record says how it went."""
        spec = self.files.template.backup
        record.status = "running"
        self.store.save(record)
        stopped = flushed = False
        try:
            if self.sup.workload is not None and spec.running == "stop":
                progress.set_stage("stopping")
                stopped = await self.sup.stop_claimed()
            elif self.sup.workload is not None and spec.pre:
                progress.set_stage("pre_commands")
                flushed = True
                await self._console_commands(spec.pre, spec.pre_wait_log, spec.pre_timeout)
            progress.set_stage("copying", await asyncio.to_thread(self.source().total_bytes))
            await asyncio.to_thread(self.engine(record.engine).create, record, self.source(), progress)
            record.status, record.error = "completed", None
        except GameplaneError as exc:
            record.status, record.error = "failed", f"{exc.code}: {exc.details}"
        except OSError as exc:
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self.store.save(record)
            if flushed and spec.post and self.sup.workload is not None:
                await self._console_commands(spec.post, None, spec.pre_timeout, check=False)
            if stopped:
                await self._start_again()
        log.info("instance %s: backup %s %s", self.files.id, record.id, record.status)

    async def _console_commands(self, commands: list[str], wait_log: str | None, timeout: float,
                                check: bool = True) -> None:
        try:
            after = None
            for command in commands:
                seq = await self.sup.send_command(command)
                after = seq if after is None else after
            if wait_log and after is not None:
                await asyncio.wait_for(self._wait_line(re.compile(wait_log), after), timeout)
        except TimeoutError as exc:
            raise BackupFailed("pre_command_timeout", {
                "commands": commands, "waitedFor": wait_log, "seconds": timeout}) from exc
        except GameplaneError:
            if check:
                raise
            log.warning("instance %s: backup command(s) %s failed", self.files.id, commands)

    async def _wait_line(self, pattern: re.Pattern[str], after: int) -> None:
        console, cursor = self.sup.console, after
        while True:
            gap, first, lines = console.read_after(cursor, limit=1000)
            if any(pattern.search(line) for line in lines):
                return
            if lines:
                cursor = first + len(lines) - 1
            elif gap is not None:
                cursor = gap[1]
            else:
                await console.wait_beyond(cursor)

    async def _start_again(self) -> None:
        try:
            await self.sup.start_claimed()
        except GameplaneError as exc:
            log.error("instance %s: could not start again after a backup/restore: %s", self.files.id, exc)

    # -- restore --------------------------------------------------------------------------
    async def _restore(self, record: BackupRecord) -> None:
        paths, journal = self.files.paths, swap.Journal(self.files.paths)
        progress = self._progress("restore", record.id)
        self._restoring = record.id
        was_running = False
        try:
            progress.set_stage("stopping")
            was_running = await self.sup.stop_claimed()
            journal.write(backupId=record.id, stage="staging", wasRunning=was_running)
            await self._safety_backup(record, progress)
            progress.set_stage("extracting", record.data_bytes)
            staging = await asyncio.to_thread(swap.prepare_staging, paths)
            await asyncio.to_thread(self.engine(record.engine).restore, record, staging, progress)
            swap.pause_point("after_extract")
            progress.set_stage("finishing")
            await asyncio.to_thread(carry_over, self.source(), staging)
            await asyncio.to_thread(self.files.chown_data, staging)
            swap.pause_point("after_verify")
            progress.set_stage("swapping")
            await asyncio.to_thread(swap.swap_in, paths, journal)
            progress.status = "completed"
        except (GameplaneError, OSError) as exc:
            log.error("instance %s: restore of %s failed: %s", self.files.id, record.id, exc)
            progress.status = "failed"
            progress.error = f"{exc.code}: {exc.details}" if isinstance(exc, GameplaneError) else str(exc)
            await asyncio.to_thread(swap.discard, paths, journal)
        finally:
            self._restoring = None
            if was_running:
                progress.set_stage("starting")
                await self._start_again()
            progress.set_stage("done")
        await self._retention(protect={record.id})

    async def _safety_backup(self, restoring: BackupRecord, progress: Progress) -> None:
        progress.set_stage("safety_backup")
        safety = BackupRecord(id=new_backup_id(time.time()), name=f"before restoring {restoring.id}",
                              engine=self.default_engine, auto=True)
        self.store.save(safety)
        await self._backup(safety, progress)
        if safety.status != "completed":
            raise BackupFailed("safety_backup_failed", {"id": safety.id, "error": safety.error})

    # -- retention ---------------------------------------------------------------------------
    async def _retention(self, protect: set[str] | None = None) -> None:
        """Keep the newest ``keep`` completed backups and none older than
        ``keep_days``; locked backups are exempt (and not counted)."""
        spec = self.files.template.backup
        keep = spec.keep or self.settings.keep
        keep_days = spec.keep_days or self.settings.keep_days
        if keep is None and keep_days is None:
            return
        candidates = [r for r in reversed(self.store.load_all())
                      if r.status == "completed" and not r.locked]
        cutoff = time.time() - keep_days * 86400 if keep_days else None
        for index, record in enumerate(candidates):
            if record.id in (protect or set()):
                continue
            if (keep is not None and index >= keep) or (cutoff is not None and record.created_at < cutoff):
                log.info("instance %s: retention deletes backup %s", self.files.id, record.id)
                await asyncio.to_thread(self._delete, record)

    def _delete(self, record: BackupRecord) -> None:
        try:
            self.engine(record.engine).delete(record)
        except BackupFailed as exc:
            log.warning("instance %s: deleting backup %s: %s", self.files.id, record.id, exc)
        self.store.remove(record.id)

    # -- after a crash ---------------------------------------------------------------------------
    def recover(self) -> bool:
        """Resolve an interrupted restore and backups; True if the workload was
        running before an interrupted restore (and should be started again)."""
        state = swap.recover(self.files.paths)
        for record in self.store.load_all():
            if record.status in ("pending", "running"):
                record.status, record.error = "failed", "the agent stopped during the backup"
                self.store.save(record)
        for tmp in self.store.dir.glob(".*.tmp") if self.store.dir.is_dir() else []:
            tmp.unlink(missing_ok=True)
        if state is None:
            return False
        self.sup.progress = lambda: {"operation": "restore", "backupId": state.get("backupId"),
                                     "stage": "done", "status": "interrupted",
                                     "outcome": state.get("outcome", "unknown")}
        return bool(state.get("wasRunning"))


def carry_over(source: Source, staging: Path) -> None:
    """Bring the data dir's files that backups do not cover (config, caches)
    into the restored tree, as hard links (same filesystem, no copy)."""
    data = source.data_dir
    for dirpath, dirnames, filenames in os.walk(data):
        rel_dir = os.path.relpath(dirpath, data)
        kept = []
        for name in dirnames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if not source.covers(rel):
                kept.append(name)
                target = staging / rel
                if not os.path.lexists(target):
                    if os.path.islink(os.path.join(dirpath, name)):
                        os.symlink(os.readlink(os.path.join(dirpath, name)), target)
                        continue
                    target.mkdir(mode=0o750)
                    shutil.copystat(os.path.join(dirpath, name), target)
        dirnames[:] = [d for d in kept if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            full, target = os.path.join(dirpath, name), staging / rel
            if source.covers(rel) or os.path.lexists(target):
                continue
            if os.path.islink(full):
                os.symlink(os.readlink(full), target)
            else:
                os.link(full, target, follow_symlinks=False)
