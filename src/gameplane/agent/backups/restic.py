"""The restic engine: Debian's ``restic`` (0.14) as a subprocess, one
repository per agent (a local path or ``s3:http://host:port/bucket``, with
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the agent's
environment), snapshots tagged with the instance id.

Backups are deduplicated against everything already in the repository, so a
second backup of unchanged data adds almost nothing. A restore goes into the
staging dir with ``--verify`` (restic re-reads every restored file and checks
it against its content hashes), and the tree is then checked like an archive
(``safety.validate_tree``) before the swap.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gameplane.agent.backups import safety
from gameplane.agent.backups.engine import BackupFailed, Progress, Source
from gameplane.agent.backups.records import BackupRecord
from gameplane.agent.files.datadir import TEMP_PREFIX

_PASSTHROUGH = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                "RESTIC_PASSWORD", "TMPDIR")


class ResticRepository:
    """One repository shared by every instance of the agent."""

    def __init__(self, repository: str, password_file: Path | None, state_dir: Path,
                 binary: str = "restic"):
        self.repository = repository
        self.state_dir = state_dir
        self.password_file = password_file or state_dir / "restic-password"
        self.binary = binary
        self._ready = False
        self._lock = threading.Lock()

    def engine(self, instance_id: str) -> ResticEngine:
        return ResticEngine(self, instance_id)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _PASSTHROUGH}
        env.update(PATH="/usr/local/bin:/usr/bin:/bin", RESTIC_REPOSITORY=self.repository,
                   RESTIC_PASSWORD_FILE=str(self.password_file),
                   RESTIC_CACHE_DIR=str(self.state_dir / "restic-cache"), HOME=str(self.state_dir))
        return env

    def run(self, *args: str, cwd: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        self.ensure()
        return self._run(list(args), cwd, check)

    def _run(self, args: list[str], cwd: Path | None, check: bool) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run([self.binary, *args], cwd=cwd, env=self.env(), capture_output=True,
                                  text=True, check=False)
        except FileNotFoundError as exc:
            raise BackupFailed("engine_unavailable", {"engine": "restic", "reason": str(exc)}) from exc
        if check and done.returncode != 0:
            raise BackupFailed("restic_failed", {"command": args[0], "exitCode": done.returncode,
                                                 "stderr": done.stderr.strip()[-2000:]})
        return done

    def ensure(self) -> None:
        """Create the password file and the repository on first use."""
        with self._lock:
            if self._ready:
                return
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if not self.password_file.exists():
                fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(32) + "\n")
            if self._run(["cat", "config"], None, check=False).returncode != 0:
                self._run(["init"], None, check=True)
            self._ready = True


class ResticEngine:
    name = "restic"

    def __init__(self, repo: ResticRepository, instance_id: str):
        self.repo = repo
        self.instance_id = instance_id

    def create(self, record: BackupRecord, source: Source, progress: Progress) -> None:
        paths = source.existing()
        if not paths:
            raise BackupFailed("nothing_to_back_up", {"paths": list(source.paths)})
        self.repo.ensure()
        # Relative paths from the data dir: the snapshot's tree starts at them,
        # so a restore lands directly in the staging dir.
        cmd = [self.repo.binary, "backup", "--json", "--tag", "gameplane",
               "--tag", f"instance:{self.instance_id}", "--host", "gameplane",
               "--exclude", f"{TEMP_PREFIX}*", "--", *paths]
        proc = subprocess.Popen(cmd, cwd=source.data_dir, env=self.repo.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        summary: dict[str, Any] = {}
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            message = _json(line)
            if message.get("message_type") == "status":
                progress.bytes_total = message.get("total_bytes") or progress.bytes_total
                progress.bytes_done = int(message.get("bytes_done") or 0)
            elif message.get("message_type") == "summary":
                summary = message
        stderr = proc.stderr.read()
        if proc.wait() != 0 or not summary.get("snapshot_id"):
            raise BackupFailed("restic_failed", {"command": "backup", "exitCode": proc.returncode,
                                                 "stderr": stderr.strip()[-2000:]})
        record.engine_id = str(summary["snapshot_id"])
        record.size_bytes = record.data_bytes = int(summary.get("total_bytes_processed") or 0)
        record.added_bytes = int(summary.get("data_added") or 0)
        record.sha256 = None

    def restore(self, record: BackupRecord, staging: Path, progress: Progress) -> None:
        if not record.engine_id:
            raise BackupFailed("snapshot_missing", {"id": record.id})
        self.repo.run("restore", record.engine_id, "--target", str(staging), "--verify")
        progress.bytes_done = safety.validate_tree(staging)

    def delete(self, record: BackupRecord) -> None:
        if record.engine_id:
            done = self.repo.run("forget", "--prune", record.engine_id, check=False)
            if done.returncode != 0:
                # Another backup holds the repository lock: forget now, prune later.
                self.repo.run("forget", record.engine_id)

    def download(self, record: BackupRecord) -> tuple[Iterator[bytes], str, str]:
        if not record.engine_id:
            raise BackupFailed("snapshot_missing", {"id": record.id})
        self.repo.ensure()
        proc = subprocess.Popen([self.repo.binary, "dump", "--archive", "tar", record.engine_id, "/"],
                                env=self.repo.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def chunks() -> Iterator[bytes]:
            assert proc.stdout is not None
            try:
                while block := proc.stdout.read(1 << 20):
                    yield block
            finally:
                proc.stdout.close()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()

        return chunks(), "application/x-tar", f"{self.instance_id}-{record.id}.tar"


def _json(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
