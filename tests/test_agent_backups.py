"""Backups through the agent's routes with the archive engine: shapes, a
restore round trip, and every error answer."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.agentctl import running_agent
from tests.backupctl import BOX, backup, data_of, restore, tree, wait_backup, write_world
from tests.conftest import TOKEN


def test_backup_of_a_running_server_runs_pre_command_and_restores_whole(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, BOX) as agent:
        c = agent.client()
        data = data_of(data_dir)
        write_world(data, "old")
        assert c.post("/start").status_code == 202
        c.wait_phase("running")
        made = backup(c, "first")
        world_at_backup = tree(data / "world")
        assert "world/saved" not in world_at_backup and "saved" in world_at_backup, "pre `save` ran first"
        assert made["name"] == "first" and made["engine"] == "archive" and made["locked"] is False
        assert made["createdAt"].endswith("Z") and made["engineId"] is None
        archive = data_dir / "instances/default/backups" / f"{made['id']}.tar.zst"
        assert made["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert made["sizeBytes"] == archive.stat().st_size

        # The download is the archive; plain tar reads it.
        r = c.get(f"/backups/{made['id']}/download")
        assert r.status_code == 200 and r.content == archive.read_bytes()
        listing = subprocess.run(["tar", "-I", "zstd", "-tf", str(archive)], capture_output=True,
                                 text=True, check=True).stdout.split()
        assert "world/level.dat" in listing and ".gameplane-manifest.json" in listing

        write_world(data, "new")
        (data / "world/extra").write_text("added after the backup")
        progress = restore(c, made["id"])
        assert progress["status"] == "completed", progress
        assert tree(data / "world") == world_at_backup
        assert (data / "conf.txt").read_text().startswith("not backed up"), "files outside paths stay"
        uid = c.status()["sandbox"]["uid"]
        assert {os.lstat(p).st_uid for p in data.rglob("*")} == {uid}
        assert c.wait_phase("running")["phase"] == "running", "started again: it was running"
        safety = [b for b in c.get("/backups").json()["backups"]
                  if b["name"] == f"before restoring {made['id']}"]
        assert len(safety) == 1 and safety[0]["status"] == "completed" and safety[0]["auto"] is True
        assert not list(data.parent.glob(".restore-*")) and not (data.parent / "run/restore.json").exists()


def test_busy_while_a_backup_waits_for_its_pre_command(data_dir: Path) -> None:
    box = Path(BOX[1]).read_text().replace("pre = [\"save\"]", "pre = [\"hang\"]")
    template = data_dir.parent / "backupbox.toml"
    template.write_text(box)
    with running_agent(data_dir, TOKEN, ["--template", str(template)]) as agent:
        c = agent.client()
        c.post("/start")
        c.wait_phase("running")
        r = c.post("/backups")
        assert r.status_code == 202 and r.json()["backup"]["status"] == "pending"
        backup_id = r.json()["backup"]["id"]
        assert c.status()["busy"] == "backup"
        for method, path in [("POST", "/backups"), ("POST", "/stop"), ("POST", "/restart")]:
            answer = c.request(method, path)
            assert answer.status_code == 409 and answer.json() == {
                "error": "busy", "details": {"operation": "backup"}}, (path, answer.text)
        assert c.request("DELETE", f"/backups/{backup_id}").json()["error"] == "busy"
        failed = wait_backup(c, backup_id, 10)
        assert failed["status"] == "failed" and "pre_command_timeout" in failed["error"]
        assert not list((data_dir / "instances/default/backups").glob("*.tar.zst*"))
        status = c.status()
        assert status["phase"] == "running" and status["busy"] is None, "a failed backup is no crash"
        assert status["progress"]["status"] == "failed"


def test_not_found_locked_and_retention(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, [*BOX, "--backup-keep", "2"]) as agent:
        c = agent.client()
        write_world(data_of(data_dir), "x")
        for path, method in [("/backups/restore?id=nope", "POST"), ("/backups/nope", "DELETE"),
                             ("/backups/nope/download", "GET"), ("/backups/nope/lock", "POST"),
                             ("/backups/..%2Fx/download", "GET")]:
            r = c.request(method, path)
            assert r.status_code == 404 and r.json()["error"] in ("backup_not_found", "not_found"), path
        assert c.post("/backups/restore").json()["error"] == "missing_field"
        assert c.post("/backups", {"name": 5}).status_code == 422

        first = backup(c, "keep me")
        locked = c.post(f"/backups/{first['id']}/lock")
        assert locked.status_code == 200 and locked.json()["backup"]["locked"] is True
        r = c.request("DELETE", f"/backups/{first['id']}")
        assert r.status_code == 409 and r.json()["error"] == "backup_locked"
        made = [backup(c, f"b{i}")["id"] for i in range(3)]
        names = [b["name"] for b in c.get("/backups").json()["backups"]]
        assert names == ["b2", "b1", "keep me"], "keep 2 unlocked ones, newest first; locked exempt"
        assert not (data_dir / "instances/default/backups" / f"{made[0]}.tar.zst").exists()
        assert c.post(f"/backups/{first['id']}/unlock").json()["backup"]["locked"] is False
        assert c.request("DELETE", f"/backups/{first['id']}").status_code == 204
        assert c.request("DELETE", f"/backups/{first['id']}").status_code == 404


def test_free_space_reserve_refuses_with_507(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, BOX) as agent:
        made = backup(agent.client())
    with running_agent(data_dir, TOKEN, [*BOX, "--backup-min-free", "1000TiB"]) as agent:
        c = agent.client()
        for path in ["/backups", f"/backups/restore?id={made['id']}"]:
            r = c.post(path)
            assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
            assert set(r.json()["details"]) == {"freeBytes", "neededBytes", "reserveBytes"}
        assert c.status()["busy"] is None
        assert len(c.get("/backups").json()["backups"]) == 1


def test_ready_answers_restoring_while_a_restore_runs(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, BOX) as agent:
        c = agent.client()
        write_world(data_of(data_dir), "big", big=400 << 20)
        made = backup(c)
        r = c.post(f"/backups/restore?id={made['id']}")
        assert r.status_code == 202
        seen = c.wait(lambda s: s["busy"] == "restore", 5, "restore")
        assert seen["progress"]["operation"] == "restore"
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "restoring"}
        assert c.post("/start").json()["error"] == "busy"
        c.wait(lambda s: s["busy"] is None, 120, "restore end")
        assert c.get("/ready").status_code == 200


def test_unknown_backup_engine_is_refused_by_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "gameplane.cli", "agent", "--backup-engine", "x"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "--backup-engine" in done.stderr
