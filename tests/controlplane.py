"""Test helpers: run a real ``gameplane up`` (API + local node agent) on free
ports against a given database, and talk to it over HTTP as a user would: as
the admin ``gameplane up`` creates, logged in after every start."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.agentctl import TEMPLATES, free_port, kill_workloads
from tests.processes import ServiceProcess

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery"


class ControlPlane(ServiceProcess):
    def __init__(self, data_dir: Path, database_url: str, poll_interval: float = 0.5,
                 **settings: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.agent_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "GAMEPLANE_DATA_DIR": str(data_dir),
            "GAMEPLANE_DATABASE_URL": database_url,
            "GAMEPLANE_LISTEN": f"127.0.0.1:{self.port}",
            "GAMEPLANE_AGENT_LISTEN": f"127.0.0.1:{self.agent_port}",
            "GAMEPLANE_POLL_INTERVAL": str(poll_interval),
            "GAMEPLANE_POLL_TIMEOUT": str(poll_interval * 0.6),
            "GAMEPLANE_PROVISION_TIMEOUT": "30",
            "GAMEPLANE_TEMPLATES_DIRS": str(TEMPLATES),
            "GAMEPLANE_PORT_RANGE": f"{30000 + os.getpid() % 20000}-{30099 + os.getpid() % 20000}",
            "GAMEPLANE_ADMIN_EMAIL": ADMIN_EMAIL,
            "GAMEPLANE_ADMIN_PASSWORD": ADMIN_PASSWORD,
            **{f"GAMEPLANE_{k.upper()}": v for k, v in settings.items()},
        }
        self.poll_interval = poll_interval
        self.headers: dict[str, str] = {}
        super().__init__(data_dir.parent / f"api-{self.port}.log")

    def start(self, timeout: float = 30) -> ControlPlane:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.launch([sys.executable, "-m", "gameplane.cli", "up"], self.url + "/readyz", (200,),
                    timeout, env=self.env)
        self.login()
        return self

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> dict[str, Any]:
        """Log in and send the access token on every later request."""
        r = httpx.post(self.url + "/api/auth/login", json={"email": email, "password": password}, timeout=30)
        assert r.status_code == 200, r.text
        tokens: dict[str, Any] = r.json()
        self.headers = {"Authorization": f"Bearer {tokens['accessToken']}"}
        return tokens

    def stop(self) -> None:
        self.terminate()

    def agent_process(self) -> psutil.Process | None:
        needle = f"127.0.0.1:{self.agent_port}"
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "agent" in cmdline and needle in cmdline:
                return proc
        return None

    def cleanup(self) -> None:
        self.stop()
        agent = self.agent_process()
        if agent is not None:
            with contextlib.suppress(psutil.Error):
                agent.resume()
                agent.kill()
        kill_workloads(self.data_dir / "agent")

    # -- HTTP --------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, timeout=30, headers=headers, **kw)

    def create(self, name: str, template: str = "freeciv", **variables: str) -> dict[str, Any]:
        if template == "freeciv":
            variables.setdefault("bind_address", "127.0.0.1")
        r = self.request("POST", "/api/game/servers",
                         json={"name": name, "template": template, "variables": variables})
        assert r.status_code == 202, r.text
        server: dict[str, Any] = r.json()["server"]
        return server

    def server(self, server_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/api/game/servers/{server_id}")
        assert r.status_code == 200, r.text
        server: dict[str, Any] = r.json()["server"]
        return server

    def power(self, server_id: str, action: str) -> httpx.Response:
        return self.request("POST", f"/api/game/servers/{server_id}/{action}")

    def wait(self, server_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30,
             what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.server(server_id)["state"]
            if predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {state}")

    def wait_phase(self, server_id: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(server_id, lambda s: s["phase"] == phase, timeout, f"phase {phase}")


@contextlib.contextmanager
def running_control_plane(data_dir: Path, database_url: str, **settings: str) -> Iterator[ControlPlane]:
    cp = ControlPlane(data_dir, database_url, **settings).start()
    try:
        yield cp
    finally:
        cp.cleanup()
