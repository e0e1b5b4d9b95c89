"""Backups through the API, end to end: `gameplane up`, a real freeciv server,
the agent's archive engine. Every answer is checked against the documented
shapes (strict schemas) and the agent's status is passed on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gameplane.backups import shapes
from tests.controlplane import ControlPlane, running_control_plane

pytestmark = pytest.mark.slow


@pytest.fixture
def cp(data_dir: Path, empty_database_url: str) -> Iterator[ControlPlane]:
    with running_control_plane(data_dir, empty_database_url) as plane:
        yield plane


def _backups(cp: ControlPlane, sid: str) -> list[dict[str, Any]]:
    r = cp.request("GET", f"/api/game/servers/{sid}/backups")
    assert r.status_code == 200
    shapes.BackupList.model_validate(r.json())
    backups: list[dict[str, Any]] = r.json()["backups"]
    return backups


def _wait_backup(cp: ControlPlane, sid: str, backup_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for b in _backups(cp, sid):
            if b["id"] == backup_id and b["status"] in ("completed", "failed"):
                return b
        time.sleep(0.1)
    raise AssertionError(f"backup {backup_id} did not end")


def test_backup_list_restore_download_delete_through_the_api(cp: ControlPlane) -> None:
    sid = cp.create("saved civ")["id"]
    cp.wait_phase(sid, "stopped")
    cp.power(sid, "start")
    cp.wait_phase(sid, "running")

    r = cp.request("POST", f"/api/game/servers/{sid}/backups", json={"name": "before the war"})
    assert r.status_code == 202, r.text
    shapes.BackupOne.model_validate(r.json())
    made = _wait_backup(cp, sid, r.json()["backup"]["id"])
    assert made["status"] == "completed" and made["name"] == "before the war"
    assert made["engine"] == "archive" and made["sizeBytes"] and len(made["sha256"]) == 64

    r = cp.request("GET", f"/api/game/servers/{sid}/backups/{made['id']}/download")
    assert r.status_code == 200
    assert r.content[:4] == bytes.fromhex("28b52ffd"), "a zstd stream"
    assert len(r.content) == made["sizeBytes"]

    r = cp.request("POST", f"/api/game/servers/{sid}/backups/restore", params={"id": made["id"]})
    assert r.status_code == 202
    shapes.RestoreAnswer.model_validate(r.json())
    assert r.json()["restore"]["backupId"] == made["id"]
    # While the restore runs the instance is busy: the delete answers 409 until it ends
    # (the cached state may still say "running" from before the restore was accepted).
    deadline = time.monotonic() + 60
    while (r := cp.request("DELETE", f"/api/game/servers/{sid}/backups/{made['id']}")).status_code == 409:
        assert r.json()["error"] == "busy", r.text
        assert time.monotonic() < deadline, "the restore did not end"
        time.sleep(0.2)
    assert r.status_code == 204, r.text
    # The server was stopped for the restore and is started again, since it was running.
    cp.wait(sid, lambda s: s["phase"] == "running" and s["ready"], 60, "running after the restore")
    assert made["id"] not in [b["id"] for b in _backups(cp, sid)]


def test_backup_errors_keep_the_agents_status_in_the_envelope(cp: ControlPlane) -> None:
    sid = cp.create("erring civ")["id"]
    cp.wait_phase(sid, "stopped")
    for method, path, params in (
            ("POST", f"/api/game/servers/{sid}/backups/restore", {"id": "no-such-backup"}),
            ("DELETE", f"/api/game/servers/{sid}/backups/no-such-backup", None),
            ("GET", f"/api/game/servers/{sid}/backups/no-such-backup/download", None)):
        r = cp.request(method, path, params=params)
        assert r.status_code == 404, (path, r.text)
        shapes.Envelope.model_validate(r.json())
        assert r.json()["error"] == "backup_not_found", r.text
    r = cp.request("POST", f"/api/game/servers/{sid}/backups/restore")
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", "id is required"
