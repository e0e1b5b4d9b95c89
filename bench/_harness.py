"""Shared helpers for the benchmarks in this folder (not a benchmark itself).

Each benchmark imports this module from its own folder, starts the agent
processes it needs with ``sys.executable -m gameplane.cli agent ...`` on free
ports inside a temp dir, and tears everything down again, including any
workload an agent left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (not its children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def median(values: list[float]) -> float:
    return statistics.median(values)


def mb(value: float) -> float:
    return value / (1024 * 1024)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # Workloads run as per-instance uids, which must be able to enter the data dir.
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Agent:
    """One ``gameplane agent`` subprocess, node or single mode."""

    def __init__(self, workdir: Path, name: str, token: str, *, node: bool = False,
                 template: str | None = None, extra: list[str] | None = None,
                 log_level: str = "warning", env: dict[str, str] | None = None):
        self.workdir = workdir
        self.name = name
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.data_dir = workdir / f"{name}-data"
        self.log_path = workdir / f"{name}.log"
        token_file = workdir / f"{name}.token"
        token_file.write_text(token + "\n")
        args = [sys.executable, "-m", "gameplane.cli", "agent",
                "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
                "--token-file", str(token_file), "--log-level", log_level]
        if node:
            args.append("--node")
        if template is not None:
            args += ["--template", template]
        args += extra or []
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"agent did not listen within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the agent process, then kill whatever workloads it left behind
        (an agent deliberately leaves its workloads running when it exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_leftover_workloads(self.data_dir)


def cgroup_name(instance_root: Path) -> str:
    # Mirrors InstanceFiles.cgroup_name.
    digest = hashlib.sha256(str(instance_root).encode()).hexdigest()[:8]
    return f"{instance_root.name}-{digest}"


def kill_leftover_workloads(data_dir: Path) -> int:
    """SIGKILL every process still in an instance's cgroup or process group and
    remove the instance's cgroups. Returns how many processes were killed."""
    instances = data_dir.resolve() / "instances"
    if not instances.is_dir():
        return 0
    killed = 0
    for root in instances.iterdir():
        name = cgroup_name(root)
        pids: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((root / "run" / "state.json").read_text())
            pid = state.get("pid")
            # Only the very process the agent recorded (a reused pid is left alone).
            if isinstance(pid, int) and _start_time(pid) == state.get("startTime"):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
        for _ in range(50):
            pids.clear()
            with contextlib.suppress(OSError):
                text = (CGROUP_ROOT / "pids" / "gameplane" / name / "cgroup.procs").read_text()
                pids.update(int(p) for p in text.split())
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.02)
        for ctrl in CGROUP_CONTROLLERS:
            with contextlib.suppress(OSError):
                (CGROUP_ROOT / ctrl / "gameplane" / name).rmdir()
    return killed


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_template(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def check_python() -> None:
    """The benchmarks need the project's venv (gameplane importable)."""
    try:
        import gameplane  # noqa: F401
    except ImportError:
        sys.exit(f"run with the project's venv: {REPO}/.venv/bin/python {sys.argv[0]}")
