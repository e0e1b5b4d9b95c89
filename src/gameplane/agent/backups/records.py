"""The backup record (the contract's ``B``) and where records are kept:
``instances/<id>/backups/<backup id>.json``, written to a temp name and
renamed, next to the archive ``<backup id>.tar.zst`` of the archive engine."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from gameplane.agent.instance import read_json, write_json_atomic
from gameplane.errors import NotFound

Status = Literal["pending", "running", "completed", "failed"]
BACKUP_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def new_backup_id(now: float) -> str:
    # Sortable by creation time; the suffix keeps two backups of one second apart.
    return time.strftime("%Y%m%dt%H%M%Sz", time.gmtime(now)) + "-" + secrets.token_hex(3)


def iso_utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class BackupRecord:
    id: str
    name: str
    engine: str
    created_at: float = field(default_factory=time.time)
    status: Status = "pending"
    size_bytes: int | None = None  # the archive's size; restic: bytes processed
    sha256: str | None = None  # of the archive file (archive engine only)
    engine_id: str | None = None  # restic: the snapshot id
    locked: bool = False
    auto: bool = False  # the safety backup taken before a restore
    data_bytes: int | None = None  # uncompressed size, for a restore's space check
    added_bytes: int | None = None  # restic: bytes the backup added to the repository
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The contract's shape (camelCase), plus a few agent extras."""
        return {"id": self.id, "name": self.name, "createdAt": iso_utc(self.created_at),
                "sizeBytes": self.size_bytes, "sha256": self.sha256, "status": self.status,
                "locked": self.locked, "engine": self.engine, "engineId": self.engine_id,
                "auto": self.auto, "dataBytes": self.data_bytes, "addedBytes": self.added_bytes,
                "error": self.error}

    @classmethod
    def from_disk(cls, data: dict[str, Any]) -> BackupRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class RecordStore:
    def __init__(self, directory: Path):
        self.dir = directory

    def ensure(self) -> None:
        # Backups hold the whole world: not for the workload's user, nor anyone else.
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def archive_path(self, backup_id: str) -> Path:
        return self.dir / f"{backup_id}.tar.zst"

    def save(self, record: BackupRecord) -> None:
        self.ensure()
        write_json_atomic(self.dir / f"{record.id}.json", asdict(record))

    def load_all(self) -> list[BackupRecord]:
        if not self.dir.is_dir():
            return []
        records = []
        for path in self.dir.glob("*.json"):
            data = read_json(path)
            if data.get("id") == path.stem:
                records.append(BackupRecord.from_disk(data))
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def get(self, backup_id: str) -> BackupRecord:
        if BACKUP_ID.match(backup_id):
            data = read_json(self.dir / f"{backup_id}.json")
            if data.get("id") == backup_id:
                return BackupRecord.from_disk(data)
        raise NotFound("backup_not_found", {"id": backup_id})

    def remove(self, backup_id: str) -> None:
        for path in (self.archive_path(backup_id), self.dir / f"{backup_id}.json"):
            path.unlink(missing_ok=True)
