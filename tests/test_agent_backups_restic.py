"""The restic engine (Debian's restic) through the agent: a local repository
and an S3 repository on moto's server."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agentctl import free_port, running_agent
from tests.backupctl import BOX, backup, data_of, restore, tree, wait_backup, write_world
from tests.conftest import TOKEN
from tests.processes import ServiceProcess

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")


@pytest.fixture
def s3_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import boto3

    port = free_port()
    moto = ServiceProcess(tmp_path / "moto.log")
    moto_server = str(Path(sys.executable).with_name("moto_server"))
    moto.launch([moto_server, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/",
                (200,), 30)
    for key, value in [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                       ("AWS_DEFAULT_REGION", "us-east-1")]:
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="backups")
    try:
        yield f"s3:http://127.0.0.1:{port}/backups"
    finally:
        moto.terminate()


def _round_trip(data_dir: Path, repository: str) -> None:
    args = [*BOX, "--backup-engine", "restic", "--backup-repository", repository]
    with running_agent(data_dir, TOKEN, args) as agent:
        c = agent.client()
        data = data_of(data_dir)
        write_world(data, "old", big=4 << 20)
        c.post("/start")
        c.wait_phase("running")
        first = backup(c, "first")
        assert first["engine"] == "restic" and first["sha256"] is None and first["engineId"]
        at_backup = tree(data / "world")
        second = backup(c, "second")
        # Unchanged data (bar world/saved, rewritten by the pre command): nearly nothing added.
        assert second["addedBytes"] < first["addedBytes"] / 10, (first, second)

        r = c.get(f"/backups/{first['id']}/download")
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            names = tar.getnames()
        assert "world/level.dat" in [n.lstrip("/") for n in names]

        write_world(data, "new")
        (data / "world/extra").write_text("after")
        progress = restore(c, first["id"])
        assert progress["status"] == "completed", progress
        assert tree(data / "world") == at_backup
        assert (data / "conf.txt").exists()
        c.wait_phase("running")

        assert c.request("DELETE", f"/backups/{second['id']}").status_code == 204
        done = subprocess.run(["restic", "snapshots", "--json"], capture_output=True, text=True, check=False,
                              env={"RESTIC_REPOSITORY": repository, "PATH": "/usr/bin:/bin",
                                   "RESTIC_PASSWORD_FILE": str(data_dir / "restic-password"),
                                   **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}})
        assert done.returncode == 0, done.stderr
        snapshots = {s["short_id"] for s in json.loads(done.stdout)}
        assert second["engineId"] not in snapshots and first["engineId"] in snapshots


def test_restic_local_repository_round_trip(data_dir: Path) -> None:
    _round_trip(data_dir, str(data_dir.parent / "restic-repo"))


def test_restic_s3_repository_on_moto_round_trip(data_dir: Path, s3_repository: str) -> None:
    _round_trip(data_dir, s3_repository)
    assert httpx.get(s3_repository.replace("s3:", "") + "?list-type=2").status_code == 200


def test_restic_repository_unreachable_fails_the_backup_not_the_agent(data_dir: Path) -> None:
    args = [*BOX, "--backup-engine", "restic", "--backup-repository", "s3:http://127.0.0.1:9/nowhere"]
    with running_agent(data_dir, TOKEN, args) as agent:
        c = agent.client()
        r = c.post("/backups")
        assert r.status_code == 202
        failed = wait_backup(c, r.json()["backup"]["id"], 120)
        assert failed["status"] == "failed" and "restic_failed" in failed["error"]
        assert c.get("/ready").status_code == 200
