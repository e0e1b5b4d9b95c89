"""The documented shapes of the backup routes (DESIGN.md section 5), and the
normalization of whatever an agent answered into them.

The agent's HTTP status is passed on; the body never is as such. Success
bodies are rebuilt field by field from what the agent said (unknown fields
dropped, missing ones defaulted, a status outside the enumeration reported as
``failed`` with the original kept in ``details``), and every non-2xx answer
becomes the envelope ``{"error", "details"}`` (``agents.proxy.envelope``) —
also when the agent's body was HTML, empty or an envelope of another shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

BackupStatus = Literal["pending", "running", "completed", "failed"]
_STATUSES = ("pending", "running", "completed", "failed")


# Field names are the API's camelCase JSON keys.
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Backup(Strict):
    id: str
    name: str | None
    createdAt: str | None
    sizeBytes: int | None
    sha256: str | None
    engineId: str | None
    status: BackupStatus
    locked: bool
    engine: str | None


class BackupOne(Strict):
    backup: Backup


class BackupList(Strict):
    backups: list[Backup]


class RestoreState(Strict):
    backupId: str
    status: str


class RestoreAnswer(Strict):
    restore: RestoreState


class Envelope(Strict):
    error: str
    details: Any


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def backup(raw: Any) -> dict[str, Any]:
    """One backup in the documented shape, from whatever the agent sent."""
    data = raw if isinstance(raw, dict) else {}
    status = data.get("status")
    return Backup(
        id=str(data.get("id", "")),
        name=text(data.get("name")),
        createdAt=text(data.get("createdAt")),
        sizeBytes=size(data.get("sizeBytes")),
        sha256=text(data.get("sha256")),
        engineId=text(data.get("engineId")),
        status=status if status in _STATUSES else "failed",
        locked=data.get("locked") is True,
        engine=text(data.get("engine")),
    ).model_dump()


def backup_list(body: Any) -> dict[str, Any]:
    items = body.get("backups") if isinstance(body, dict) else None
    return {"backups": [backup(item) for item in items or [] if isinstance(item, dict)]}


def backup_one(body: Any) -> dict[str, Any]:
    return {"backup": backup(body.get("backup") if isinstance(body, dict) else None)}


def restore(body: Any, backup_id: str) -> dict[str, Any]:
    raw = body.get("restore") if isinstance(body, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    return {"restore": {"backupId": str(raw.get("backupId") or backup_id),
                        "status": text(raw.get("status")) or "pending"}}
