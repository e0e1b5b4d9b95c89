"""Test helpers: run a real ``gameplane agent`` process on a free port and talk
to it over HTTP and websockets, as the API will."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.processes import ServiceProcess

TEMPLATES = Path(__file__).parent / "templates"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP, so a template may use either."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class Agent(ServiceProcess):
    """One agent process. ``base`` is the instance prefix ('' or '/i/<id>')."""

    def __init__(self, data_dir: Path, token: str, args: list[str]):
        self.data_dir = data_dir
        self.token = token
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(data_dir.parent / f"agent-{self.port}.log")

    def start(self, timeout: float = 15) -> Agent:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token_file = self.data_dir.parent / f"token-{self.port}"
        token_file.write_text(self.token)
        cmd = [sys.executable, "-m", "gameplane.cli", "agent", "--data-dir", str(self.data_dir),
               "--listen", f"127.0.0.1:{self.port}", "--token-file", str(token_file), *self.args]
        self.launch(cmd, self.url + "/health", (200, 404), timeout)
        return self

    def client(self, base: str = "", token: str | None = None) -> Client:
        return Client(self.url + base, token if token is not None else self.token)


class Client:
    def __init__(self, url: str, token: str | None):
        self.url = url
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers, timeout=10, **kw)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.request("POST", path, json=body)

    def status(self) -> dict[str, Any]:
        r = self.get("/status")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def wait(self, predicate: Any, timeout: float = 30, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status = self.status()
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {json.dumps(status)[:2000]}")

    def wait_phase(self, phase: str, timeout: float = 30) -> dict[str, Any]:
        def reached(s: dict[str, Any]) -> bool:
            if s["phase"] == "crashed" != phase and s["busy"] is None and "restarting" not in s["reason"]:
                raise AssertionError(f"crashed while waiting for {phase}: {s['reason']}")
            return bool(s["phase"] == phase and s["busy"] is None)

        return self.wait(reached, timeout, f"phase {phase}")

    def command(self, command: str) -> httpx.Response:
        return self.post("/console/command", {"command": command})

    def ws(self, since: int | None = None) -> ClientConnection:
        url = self.url.replace("http://", "ws://") + "/console/ws"
        if since is not None:
            url += f"?since={since}"
        return connect(url, additional_headers=self.headers, open_timeout=5)


def read_frames(ws: ClientConnection, until: Any, timeout: float = 15) -> list[dict[str, Any]]:
    """Frames until ``until(frame)`` is true (inclusive)."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame; got {frames[-20:]}")
        frame = json.loads(ws.recv(timeout=remaining))
        frames.append(frame)
        if until(frame):
            return frames


def output_lines(frames: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(f["seq"], f["line"]) for f in frames if f["type"] == "output"]


@contextlib.contextmanager
def running_agent(data_dir: Path, token: str, args: list[str]) -> Iterator[Agent]:
    agent = Agent(data_dir, token, args).start()
    try:
        yield agent
    finally:
        agent.terminate()
        kill_workloads(data_dir)


def kill_workloads(data_dir: Path) -> None:
    """Workloads outlive their agent by design: tests must end them."""
    for state in data_dir.glob("instances/*/run/state.json"):
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(state.read_text())
            pid = data.get("pid")
            status = state.parent / "status.json"
            pids = [pid] if isinstance(pid, int) else []
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    child = json.loads(line).get("child-pid")
                    if child:
                        pids.append(child)
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
