"""The local provider: instances live in one node agent on this host, which the
API starts on first use and finds again after its own restart.

The node agent is started detached (its own session): game servers must
survive an API restart, and so must the agent that supervises them. Its node
token is generated once into ``<data_dir>/node.token`` (0600). While the API
runs it watches the agent, whether it started it or found it running, and
starts it again, after a pause, if it dies (the agent finds its running
servers again).

Placement: ports come from the configured range, skipping ports held by other
instances and ports something else on the host has bound; memory is checked
against the host's total so the sum of the templates' limits never exceeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterable

import psutil

from gameplane.agents.client import AgentClient, AgentEndpoint
from gameplane.errors import GameplaneError, Unavailable
from gameplane.net import port_free
from gameplane.providers.base import Placement, ProvisionSpec
from gameplane.settings import Settings
from gameplane.templates.model import Template

log = logging.getLogger(__name__)


class NoCapacity(GameplaneError):
    status = 503
    code = "no_capacity"


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings, client: AgentClient, memory_total: int | None = None,
                 respawn_delay: float = 3.0):
        self.settings = settings
        self.client = client
        self.agent_dir = settings.data_dir / "agent"
        self.token_file = settings.data_dir / "node.token"
        host, port = settings.agent_listen
        self.base_url = f"http://{host}:{port}"
        self.memory_total = memory_total or psutil.virtual_memory().total
        self._token: str | None = None
        self._lock = asyncio.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.respawn_delay = respawn_delay

    @property
    def node(self) -> AgentEndpoint:
        assert self._token is not None, "start() first"
        return AgentEndpoint(self.base_url, self._token)

    def _ensure_token(self) -> str:
        if not self.token_file.exists():
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return self.token_file.read_text().strip()

    async def start(self, timeout: float = 20.0) -> None:
        """Find the node agent, or start it; either way check its token works."""
        async with self._lock:
            self._token = self._ensure_token()
            if not await self._answers():
                self._spawn()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while not await self._answers():
                    if loop.time() > deadline:
                        raise Unavailable("node_agent_unavailable",
                                          {"url": self.base_url, "log": str(self.agent_dir / "agent.log")})
                    await asyncio.sleep(0.1)
            await self.client.list_instances(self.node)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_child())

    async def _watch_child(self) -> None:
        """Start the node agent again, after a pause, when it dies: one this API
        started is reaped; one it found running (started by an API before a
        restart, so not its child) is dead when nothing holds its port any more.
        A hung agent still holds its port and is left alone: the poller reports
        its instances unreachable, and a second agent could not bind anyway."""
        port = self.settings.agent_listen[1]
        while True:
            await asyncio.sleep(0.5)
            child = self._child
            if child is not None:
                if child.poll() is None:
                    continue
                log.error("the local node agent exited with %s; starting it again in %gs",
                          child.returncode, self.respawn_delay)
                self._child = None
            elif port_free(port, "tcp"):
                log.error("the local node agent (not started by this API) is gone; "
                          "starting it again in %gs", self.respawn_delay)
            else:
                continue
            await asyncio.sleep(self.respawn_delay)
            if not await self._answers():
                self._spawn()

    async def close(self) -> None:
        """Stop watching; the agent itself keeps running. Safe to call twice."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None

    async def _answers(self) -> bool:
        with contextlib.suppress(GameplaneError):
            await self.client.health(AgentEndpoint(self.base_url, ""))
            return True
        return False

    def _spawn(self) -> None:
        self.agent_dir.mkdir(parents=True, exist_ok=True)
        # Workload users resolve their data dirs through these folders.
        for folder in (self.settings.data_dir, self.agent_dir):
            os.chmod(folder, os.stat(folder).st_mode | 0o111)  # noqa: S103 (search only)
        host, port = self.settings.agent_listen
        cmd = [sys.executable, "-m", "gameplane.cli", "agent", "--node",
               "--data-dir", str(self.agent_dir), "--listen", f"{host}:{port}",
               "--token-file", str(self.token_file)]
        for folder in self.settings.templates_dirs:
            cmd += ["--templates-dir", str(folder)]
        log.info("starting the local node agent: %s", " ".join(cmd))
        with open(self.agent_dir / "agent.log", "ab") as out:
            self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)

    # -- placement ----------------------------------------------------------------
    def place(self, template: Template, taken_ports: Iterable[int], committed_memory: int) -> dict[str, int]:
        """Ports for a new instance of ``template``, or ``NoCapacity``."""
        needed = template.limits.memory or 0
        if committed_memory + needed > self.memory_total:
            raise NoCapacity(details={
                "reason": "not enough memory on this host for the template's limit",
                "neededBytes": needed, "freeBytes": max(0, self.memory_total - committed_memory)})
        taken = set(taken_ports)
        ports: dict[str, int] = {}
        candidates = iter(range(self.settings.port_range.first, self.settings.port_range.last + 1))
        for name, spec in template.ports.items():
            for port in candidates:
                if port not in taken and port_free(port, spec.protocol):
                    ports[name] = port
                    taken.add(port)
                    break
            else:
                raise NoCapacity(details={"reason": "no free port left in the range",
                                          "range": str(self.settings.port_range)})
        return ports

    # -- lifecycle ------------------------------------------------------------------
    async def create(self, spec: ProvisionSpec) -> Placement:
        await self.client.create_instance(self.node, spec.instance_id, spec.template, spec.token_hash,
                                          spec.variables, spec.ports)
        return Placement(agent_url=f"{self.base_url}/i/{spec.instance_id}", node="local",
                         ports=spec.ports)

    async def destroy(self, instance_id: str) -> None:
        await self.client.delete_instance(self.node, instance_id, missing_ok=True)

    async def instance_ids(self) -> set[str]:
        listing = await self.client.list_instances(self.node)
        return {str(item["id"]) for item in listing.get("instances", [])}
