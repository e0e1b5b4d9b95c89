"""Helpers for the backup tests: a world of files in an instance's data dir,
a manifest of it to compare, and waiting for a backup or restore to end."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from tests.agentctl import TEMPLATES, Client

BOX = ["--template", str(TEMPLATES / "backupbox.toml")]


def data_of(data_dir: Path, instance: str = "default") -> Path:
    return data_dir / "instances" / instance / "data"


def tree(root: Path) -> dict[str, str]:
    """relative path → sha256 (files), 'dir' or '-> target' (symlinks)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = "-> " + os.readlink(full)
            elif full.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def write_world(root: Path, tag: str, big: int = 0) -> None:
    """A few small files, a nested dir, a symlink, and optionally ``big`` bytes of noise."""
    world = root / "world"
    (world / "region").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (world / "region" / f"chunk{i}.dat").write_text(f"{tag} chunk {i}\n" * (i + 1))
    (world / "level.dat").write_text(f"level of {tag}\n")
    link = world / "latest"
    if not link.is_symlink():
        link.symlink_to("level.dat")
    if big:
        (world / "big.bin").write_bytes(os.urandom(big))


def wait_backup(c: Client, backup_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b in c.get("/backups").json()["backups"]:
            if b["id"] == backup_id and b["status"] in ("completed", "failed"):
                return dict(b)
        time.sleep(0.05)
    raise AssertionError(f"backup {backup_id} did not end: {c.get('/backups').text}")


def backup(c: Client, name: str | None = None) -> dict[str, Any]:
    r = c.post("/backups", {"name": name} if name else None)
    assert r.status_code == 202, r.text
    done = wait_backup(c, r.json()["backup"]["id"])
    assert done["status"] == "completed", done
    return done


def restore(c: Client, backup_id: str, timeout: float = 60) -> dict[str, Any]:
    r = c.post(f"/backups/restore?id={backup_id}")
    assert r.status_code == 202, r.text
    assert r.json() == {"restore": {"backupId": backup_id, "status": "pending"}}
    status = c.wait(lambda s: s["busy"] is None and (s["progress"] or {}).get("stage") == "done",
                    timeout, "restore")
    progress: dict[str, Any] = status["progress"]
    return progress
