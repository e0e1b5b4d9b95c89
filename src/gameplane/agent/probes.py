"""Readiness probes: a log-line regex, a TCP connect and a UDP request/response.
A start is ready when every probe the template configures has passed; the
first that has not passed by the timeout names the reason."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from gameplane.templates import Rendering
from gameplane.templates.model import Ready


@dataclass
class ProbeResult:
    name: str
    passed: bool = False
    detail: str = "not yet run"
    at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "detail": self.detail, "at": self.at}


@dataclass
class ProbeSet:
    """The probes of one start attempt and what they have seen so far."""

    spec: Ready
    rendering: Rendering
    results: dict[str, ProbeResult] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _log_re: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if self.spec.log:
            self._log_re = re.compile(self.rendering.render(self.spec.log, escape=re.escape))
            self.results["log"] = ProbeResult("log", detail="waiting for a matching log line")
        if self.spec.tcp:
            self.results["tcp"] = ProbeResult("tcp")
        if self.spec.udp:
            self.results["udp"] = ProbeResult("udp")
        if self.passed:
            self.done.set()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results.values())

    def failing_reason(self) -> str:
        for r in self.results.values():
            if not r.passed:
                return f"readiness probe '{r.name}' did not pass within {self.spec.timeout:g}s: {r.detail}"
        return ""

    def feed_lines(self, lines: list[str]) -> None:
        result = self.results.get("log")
        if result is None or result.passed or self._log_re is None:
            return
        for line in lines:
            if self._log_re.search(line):
                self._pass(result, f"matched: {line[:200]}")
                return

    async def run_network(self) -> None:
        """Retry the network probes every ``interval`` until all pass."""
        while not self.passed:
            if self.spec.tcp and not self.results["tcp"].passed:
                await self._tcp()
            if self.spec.udp and not self.results["udp"].passed:
                await self._udp()
            await asyncio.sleep(self.spec.interval)

    def _pass(self, result: ProbeResult, detail: str) -> None:
        result.passed, result.detail, result.at = True, detail, time.time()
        if self.passed:
            self.done.set()

    async def _tcp(self) -> None:
        assert self.spec.tcp
        port = self.rendering.ports[self.spec.tcp]
        result = self.results["tcp"]
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        except (OSError, TimeoutError) as exc:
            result.detail = f"connect to 127.0.0.1:{port}: {exc.__class__.__name__} {exc}".strip()
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self._pass(result, f"connected to 127.0.0.1:{port}")

    async def _udp(self) -> None:
        spec = self.spec.udp
        assert spec
        port = self.rendering.ports[spec.port]
        result = self.results["udp"]
        try:
            reply = await udp_exchange("127.0.0.1", port, bytes.fromhex(spec.send), timeout=1.0)
        except (OSError, TimeoutError) as exc:
            result.detail = f"udp 127.0.0.1:{port}: no reply ({exc.__class__.__name__})"
            return
        if not reply.hex().startswith(spec.expect.lower()):
            result.detail = f"udp 127.0.0.1:{port}: unexpected reply {reply[:32].hex()}"
            return
        self._pass(result, f"udp reply from 127.0.0.1:{port}: {reply[:32].hex()}")


async def udp_exchange(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send one datagram and return the first reply."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, payload)
        return await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)
    finally:
        sock.close()
