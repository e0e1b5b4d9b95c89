"""Fakes for tests of code that talks to agents (this package's and the
API's): a clock driven by hand and a scripted fleet of agents behind a
``MockTransport``. Nothing here opens a socket or sleeps for real.

    clock = ManualClock()
    fleet = FakeAgents()
    agent = fleet.add("http://node:7000/i/a", token="t", phase="running")
    client = AgentClient(fleet.transport, sleep=clock.sleep)
    poller = Poller(client, targets, clock=clock, interval=10, timeout=2)
    agent.mode = "refused"          # the agent dies
    await clock.advance(10)         # one interval passes
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gameplane.agents.client import (
    MockRequest,
    MockTransport,
    RawResponse,
    TransportConnectError,
    TransportTimeout,
)

__all__ = ["FakeAgent", "FakeAgents", "ManualClock"]


class ManualClock:
    """A ``Clock`` that moves only when ``advance()`` is awaited. Sleepers
    wake in deadline order, each with the clock set to its deadline, and the
    loop is run until the woken tasks have settled before time moves on."""

    def __init__(self, start: datetime = datetime(2026, 11, 25, 18, 0, 0, tzinfo=UTC),
                 monotonic: float = 1000.0, settle_rounds: int = 50):
        self._start = start
        self._origin = monotonic
        self._now = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.settle_rounds = settle_rounds

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._now - self._origin)

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def settle(self) -> None:
        """Let every runnable task run until it blocks again."""
        for _ in range(self.settle_rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()


Mode = Literal["up", "refused", "reset", "timeout", "hung", "auth"]


@dataclass
class FakeAgent:
    """One scripted agent. ``mode``: ``up`` answers; ``refused``/``reset``
    raise a connect error; ``timeout`` raises a timeout at once; ``hung``
    never answers (the call's timeout ends it, in real time); ``auth``
    answers 401 to every authenticated route. ``answers`` overrides a route's
    answer (e.g. ``{"/ready": RawResponse(200, b"not json")}``)."""

    base_url: str
    token: str | None = None  # None: any token is accepted
    phase: str = "stopped"
    ready: bool = True
    reason: str | None = None
    not_ready_reason: str = "not installed"
    mode: Mode = "up"
    resources: dict[str, Any] = field(default_factory=lambda: {
        "cpuPercent": 1.5, "memoryBytes": 1048576, "processes": 1, "diskBytes": 4096})
    extra_status: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, RawResponse] = field(default_factory=dict)
    routes: list[str] = field(default_factory=list)  # every route asked, in order
    seq: int = 0

    def status_body(self) -> dict[str, Any]:
        return {"instanceId": self.base_url.rsplit("/", 1)[-1], "template": "fake", "kind": "game",
                "phase": self.phase, "reason": self.reason, "since": 0.0, "seq": self.seq,
                "busy": None, "pid": None, "exitCode": None, "restarts": 0, "startedAt": None,
                "consoleSeq": 0, "probes": {}, "ports": {}, "resources": self.resources,
                "sandbox": {}, **self.extra_status}

    def answer(self, method: str, route: str, request: MockRequest) -> RawResponse | Awaitable[RawResponse]:
        self.routes.append(route)
        if self.mode in ("refused", "reset"):
            raise TransportConnectError(f"connection {self.mode}")
        if self.mode == "timeout":
            raise TransportTimeout(f"no answer within {request.timeout:g}s")
        if self.mode == "hung":
            return _never()
        if route in self.answers:
            return self.answers[route]
        if route != "/health":
            expected = f"Bearer {self.token}"
            if self.mode == "auth" or (self.token is not None
                                       and request.headers.get("Authorization") != expected):
                return RawResponse.json(401, {"error": "invalid_token", "details": None})
        if method == "GET" and route == "/health":
            return RawResponse.json(200, {"status": "ok"})
        if method == "GET" and route == "/ready":
            if self.ready:
                return RawResponse.json(200, {"ready": True, "phase": self.phase, "busy": None,
                                              "seq": self.seq})
            return RawResponse.json(503, {"ready": False, "reason": self.not_ready_reason})
        if method == "GET" and route == "/status":
            return RawResponse.json(200, self.status_body())
        if method == "POST" and route in ("/start", "/stop", "/restart", "/kill"):
            return RawResponse.json(202, {"accepted": True, "operation": route[1:], "phase": self.phase,
                                          "seq": self.seq})
        return RawResponse.json(404, {"error": "not_found", "details": {"path": route}})


async def _never() -> RawResponse:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class FakeAgents:
    """A fleet of ``FakeAgent``s keyed by base URL, answering through
    ``self.transport`` (a ``MockTransport``)."""

    def __init__(self) -> None:
        self.agents: dict[str, FakeAgent] = {}
        self.transport = MockTransport(self.handle)

    def add(self, base_url: str, **fields: Any) -> FakeAgent:
        agent = self.agents[base_url.rstrip("/")] = FakeAgent(base_url.rstrip("/"), **fields)
        return agent

    def handle(self, request: MockRequest) -> RawResponse | Awaitable[RawResponse]:
        best = ""
        for base in self.agents:
            if request.url.startswith(base + "/") and len(base) > len(best):
                best = base
        if not best:
            raise TransportConnectError("connection refused")
        route = request.url[len(best):].split("?", 1)[0]
        return self.agents[best].answer(request.method, route, request)

    @property
    def requests(self) -> int:
        return len(self.transport.requests)
