"""The poller against scripted fake agents, on a clock driven by hand
(gameplane.agents.testing), in the manner of home-assistant's coordinator
tests: nothing sleeps for real unless a test says so."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gameplane.agents.client import AgentClient, AgentEndpoint, MockRequest, MockTransport, RawResponse
from gameplane.agents.poller import Poller, Target
from gameplane.agents.state import NormalizedState
from gameplane.agents.testing import FakeAgent, FakeAgents, ManualClock

NODE = "http://node.test:7000"


class Changes:
    """An on_change listener that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, NormalizedState, NormalizedState | None]] = []

    async def __call__(self, iid: str, new: NormalizedState, previous: NormalizedState | None) -> None:
        self.calls.append((iid, new, previous))

    def phases(self, iid: str) -> list[str]:
        return [new["phase"] for i, new, _ in self.calls if i == iid]


class Setup:
    def __init__(self, count: int = 1, lifecycle: str = "active", **poller: Any):
        self.clock = ManualClock()
        self.fleet = FakeAgents()
        self.agents: dict[str, FakeAgent] = {}
        self.lifecycles: dict[str, str] = {}
        for n in range(count):
            iid = f"i{n}"
            self.agents[iid] = self.fleet.add(f"{NODE}/i/{iid}", token=f"token-{iid}", phase="running")
            self.lifecycles[iid] = lifecycle
        self.times: list[tuple[float, str]] = []  # (clock time, url) of every request
        fleet_handle = self.fleet.handle

        def recording(request: MockRequest) -> RawResponse | Awaitable[RawResponse]:
            self.times.append((self.clock.monotonic(), request.url))
            return fleet_handle(request)

        self.fleet.transport.handler = recording
        self.client = AgentClient(self.fleet.transport, sleep=self.clock.sleep)
        self.changes = Changes()
        options: dict[str, Any] = {"interval": 10.0, "timeout": 2.0, "clock": self.clock, **poller}
        self.poller = Poller(self.client, self.targets, self.changes, **options)

    async def targets(self) -> list[Target]:
        return [Target(iid, AgentEndpoint(f"{NODE}/i/{iid}", f"token-{iid}"), self.lifecycles[iid])
                for iid in self.agents if iid in self.lifecycles]

    def routes(self, iid: str = "i0") -> list[str]:
        return self.agents[iid].routes


async def test_the_first_cycle_reports_every_instance_with_two_requests_each() -> None:
    s = Setup(3)
    stats = await s.poller.poll_once()
    assert (stats.targets, stats.polled, stats.requests, stats.ready, stats.changes) == (3, 3, 6, 3, 3)
    for iid in ("i0", "i1", "i2"):
        state = s.poller.state(iid)
        assert state is not None and state["phase"] == "running" and state["ready"] and state["online"]
        assert s.routes(iid) == ["/ready", "/status"], "no /health when /ready answered"
    assert [prev for _, _, prev in s.changes.calls] == [None, None, None]


async def test_an_unchanged_agent_is_no_event_but_its_state_is_refreshed() -> None:
    s = Setup()
    await s.poller.poll_once()
    await s.clock.advance(10)
    s.agents["i0"].resources = {"cpuPercent": 50.0, "memoryBytes": 5, "diskBytes": 6}
    stats = await s.poller.poll_once()
    assert stats.changes == 0 and len(s.changes.calls) == 1
    state = s.poller.state("i0")
    assert state is not None
    assert state["lastSeenAt"] == "2026-11-25T18:00:10Z" and state["since"] == "2026-11-25T18:00:00Z"
    assert state["resources"] == {"cpuPercent": 50.0, "memoryBytes": 5, "diskBytes": 6}


@pytest.mark.parametrize("mode", ["refused", "reset", "timeout"])
async def test_the_first_failure_marks_the_agent_unreachable_at_once(mode: Any) -> None:
    s = Setup()
    await s.poller.poll_once()
    s.agents["i0"].mode = mode
    stats = await s.poller.poll_once()
    assert stats.unreachable == 1 and stats.requests == 1, "no /status after /ready got no answer"
    _, new, previous = s.changes.calls[-1]
    assert previous is not None and previous["phase"] == "running" and previous["ready"]
    assert (new["phase"], new["ready"], new["online"], new["reachable"]) == (
        "unreachable", False, False, False)
    assert new["reason"] is not None and new["reason"].startswith(
        "agent unreachable" if mode != "timeout" else "agent did not answer")
    assert new["lastSeenAt"] == previous["lastSeenAt"]


async def test_backoff_schedule_doubles_up_to_the_cap() -> None:
    s = Setup(max_backoff=80.0)  # 8 intervals
    s.agents["i0"].mode = "refused"
    attempted = []
    for cycle in range(40):
        before = len(s.routes())
        stats = await s.poller.poll_once()
        if len(s.routes()) > before:
            attempted.append(cycle)
        else:
            assert stats.skipped == 1
    gaps = [b - a for a, b in itertools.pairwise(attempted)]
    assert gaps[:4] == [1, 2, 4, 8] and set(gaps[4:]) == {8}
    assert [s.poller.backoff_cycles(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert s.changes.phases("i0") == ["unreachable"], "one event, not one per failed attempt"


async def test_recovery_is_seen_at_the_next_attempt_and_resets_the_backoff() -> None:
    s = Setup()
    s.agents["i0"].mode = "refused"
    for _ in range(4):  # attempts at cycles 0, 1, 3; the next at 7
        await s.poller.poll_once()
    s.agents["i0"].mode = "up"
    phases = []
    for _ in range(4):
        await s.poller.poll_once()
        state = s.poller.state("i0")
        assert state is not None
        phases.append(state["phase"])
    assert phases == ["unreachable", "unreachable", "unreachable", "running"]
    assert s.changes.phases("i0") == ["unreachable", "running"]
    before = len(s.routes())
    await s.poller.poll_once()
    assert len(s.routes()) == before + 2, "polled every cycle again"


@pytest.mark.parametrize(("answer", "ready"), [
    (RawResponse.json(200, {"ready": True}), True),
    (RawResponse.json(200, {"ready": False}), False),
    (RawResponse(200, b"ready"), False),
    (RawResponse.json(200, {"ready": "true"}), False),
    (RawResponse.json(503, {"ready": False, "reason": "restoring"}), False),
    (RawResponse.json(500, {"error": "internal_error", "details": None}), False),
    (RawResponse(502, b"Bad Gateway"), False),
    (RawResponse.json(404, {"error": "not_found", "details": None}), False),
])
async def test_ready_is_cached_only_after_a_semantically_successful_ready(answer: RawResponse,
                                                                         ready: bool) -> None:
    s = Setup()
    s.agents["i0"].answers["/ready"] = answer
    await s.poller.poll_once()
    state = s.poller.state("i0")
    assert state is not None and state["ready"] is ready
    assert state["phase"] == "running" and state["reachable"], "the agent answered: its phase is known"
    assert s.routes() == ["/ready", "/status"], "never retried inside a cycle"


async def test_ready_goes_false_with_the_first_failed_poll_and_back_only_on_success() -> None:
    s = Setup()
    agent = s.agents["i0"]
    seen = []
    for mode, override in [("up", None), ("timeout", None), ("up", RawResponse.json(200, {"ready": 1})),
                           ("up", None)]:
        agent.mode = mode
        agent.answers.pop("/ready", None)
        if override is not None:
            agent.answers["/ready"] = override
        await s.poller.poll_once()
        state = s.poller.state("i0")
        assert state is not None
        seen.append(state["ready"])
    assert seen == [True, False, False, True]


async def test_the_not_ready_reason_of_the_agent_is_shown() -> None:
    s = Setup()
    s.agents["i0"].ready = False
    s.agents["i0"].phase = "stopped"
    await s.poller.poll_once()
    state = s.poller.state("i0")
    assert state is not None and (state["phase"], state["ready"], state["reason"]) == (
        "stopped", False, "not installed")


async def test_a_refused_credential_is_reachable_unreachable_and_not_backed_off() -> None:
    s = Setup()
    s.agents["i0"].mode = "auth"
    for _ in range(3):
        stats = await s.poller.poll_once()
        assert stats.requests == 1 and stats.skipped == 0
    state = s.poller.state("i0")
    assert state is not None and (state["phase"], state["reachable"], state["ready"]) == (
        "unreachable", True, False)
    assert state["reason"] == "the agent refused the control plane's credentials (401)"


async def test_a_broken_status_after_a_good_ready_is_a_bad_response() -> None:
    s = Setup()
    s.agents["i0"].answers["/status"] = RawResponse(500, b"Internal Server Error")
    await s.poller.poll_once()
    state = s.poller.state("i0")
    assert state is not None and (state["phase"], state["reachable"], state["ready"]) == (
        "unreachable", True, False)
    assert "HTTP 500" in (state["reason"] or "")


async def test_lifecycles_win_and_failed_or_deleting_instances_are_not_polled() -> None:
    s = Setup(4)
    s.lifecycles.update(i0="provisioning", i1="suspended", i2="failed", i3="deleting")
    stats = await s.poller.poll_once()
    assert stats.requests == 4 and s.routes("i2") == [] and s.routes("i3") == []
    for iid, phase in [("i0", "provisioning"), ("i1", "suspended"), ("i2", "failed"), ("i3", "deleting")]:
        state = s.poller.state(iid)
        assert state is not None and state["phase"] == phase and not state["ready"] and not state["online"]
    i0 = s.poller.state("i0")
    assert i0 is not None and i0["reachable"] and i0["resources"]["cpuPercent"] == 1.5
    s.lifecycles["i0"] = "active"
    await s.poller.poll_once()
    assert s.changes.phases("i0") == ["provisioning", "running"]


async def test_instances_no_longer_targeted_are_forgotten() -> None:
    s = Setup(2)
    await s.poller.poll_once()
    del s.lifecycles["i1"]
    await s.poller.poll_once()
    assert s.poller.state("i1") is None and set(s.poller.states()) == {"i0"}


async def test_a_failing_listener_does_not_stop_polling(caplog: pytest.LogCaptureFixture) -> None:
    s = Setup(2)

    async def broken(iid: str, new: NormalizedState, previous: NormalizedState | None) -> None:
        raise RuntimeError("database down")

    poller = Poller(s.client, s.targets, broken, interval=10, timeout=2, clock=s.clock)
    stats = await poller.poll_once()
    assert stats.polled == 2 and poller.state("i1") is not None
    assert "on_change listener failed" in caplog.text


async def test_concurrency_is_bounded() -> None:
    in_flight = peak = 0

    async def slow(request: MockRequest) -> RawResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if request.url.endswith("/ready"):
            return RawResponse.json(200, {"ready": True})
        return RawResponse.json(200, {"phase": "running"})

    client = AgentClient(MockTransport(slow))

    async def targets() -> list[Target]:
        return [Target(f"i{n}", AgentEndpoint(f"{NODE}/i/i{n}", "t"), "active") for n in range(12)]

    poller = Poller(client, targets, interval=10, timeout=2, concurrency=3)
    stats = await poller.poll_once()
    assert stats.polled == 12 and peak == 3


async def test_a_hung_agent_ends_at_the_poll_timeout() -> None:
    """Real time: the fake agent never answers, the 50 ms timeout ends the poll."""
    s = Setup(timeout=0.05, interval=0.5)
    s.agents["i0"].mode = "hung"
    stats = await asyncio.wait_for(s.poller.poll_once(), 2)
    state = s.poller.state("i0")
    assert stats.unreachable == 1 and state is not None and state["phase"] == "unreachable"
    assert state["reason"] == "agent did not answer: no answer within 0.05s"


# -- run(): the schedule on the controlled clock ---------------------------------------------------
async def test_run_spreads_targets_over_the_window_and_polls_each_every_interval() -> None:
    s = Setup(20)  # interval 10, timeout 2: spread over the first 6 s of each cycle
    start = s.clock.monotonic()
    task = asyncio.create_task(s.poller.run())
    for _ in range(74):  # 37 s: four cycles, each fully dispatched
        await s.clock.advance(0.5)
    await s.poller.shutdown()
    await task
    ready_times: dict[str, list[float]] = {}
    for at, url in s.times:
        if url.endswith("/ready"):
            ready_times.setdefault(url.split("/i/")[1].split("/")[0], []).append(at - start)
    assert set(ready_times) == set(s.agents)
    offsets = sorted(times[0] for times in ready_times.values())
    assert offsets[0] >= 0 and offsets[-1] < 6, "within the window"
    assert len({round(o, 3) for o in offsets}) >= 8, "spread out, not all at once"
    assert all(round(o / 0.5, 6).is_integer() for o in offsets), "released in ticks of interval / 20"
    for times in ready_times.values():
        assert len(times) == 4  # cycles at 0, 10, 20, 30
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g == pytest.approx(10, abs=0.01) for g in gaps)


async def test_run_marks_a_dead_agent_unreachable_within_two_intervals() -> None:
    s = Setup(5)
    task = asyncio.create_task(s.poller.run())
    await s.clock.advance(13.7)  # mid-cycle
    died_at = s.clock.monotonic()
    for agent in s.agents.values():
        agent.mode = "timeout"
    detected: dict[str, float] = {}
    while len(detected) < 5 and s.clock.monotonic() < died_at + 30:
        await s.clock.advance(0.1)
        for iid in s.agents:
            state = s.poller.state(iid)
            if state is not None and state["phase"] == "unreachable" and iid not in detected:
                detected[iid] = s.clock.monotonic()
                assert not state["ready"]
    await s.poller.shutdown()
    await task
    assert len(detected) == 5
    assert max(detected.values()) - died_at <= 2 * 10


async def test_shutdown_is_safe_twice_and_before_run() -> None:
    s = Setup()
    await s.poller.shutdown()
    await asyncio.wait_for(s.poller.run(), 1)  # returns at once: already shut down

    s2 = Setup()
    task = asyncio.create_task(s2.poller.run())
    await s2.clock.advance(25)
    await s2.poller.shutdown()
    await s2.poller.shutdown()
    assert task.done() and not task.cancelled() and task.exception() is None
    assert len(s2.routes()) == 6  # cycles at 0, 10, 20


async def test_cancelling_run_from_outside_propagates() -> None:
    s = Setup()
    task = asyncio.create_task(s.poller.run())
    await s.clock.advance(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_survives_a_failing_targets_source(caplog: pytest.LogCaptureFixture) -> None:
    s = Setup()
    calls = 0
    real: Callable[[], Awaitable[list[Target]]] = s.targets

    async def flaky() -> list[Target]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database unavailable")
        return await real()

    poller = Poller(s.client, flaky, s.changes, interval=10, timeout=2, clock=s.clock)
    task = asyncio.create_task(poller.run())
    await s.clock.advance(17)  # the second cycle, spread over its first 6 s
    await poller.shutdown()
    await task
    assert "poll cycle failed" in caplog.text
    assert poller.state("i0") is not None


async def test_poll_now_and_seed() -> None:
    s = Setup()
    persisted: NormalizedState = {
        "phase": "running", "ready": True, "online": True, "reachable": True,
        "since": "2026-01-01T00:00:00Z", "lastSeenAt": "2026-01-01T00:00:00Z", "reason": None,
        "resources": {"cpuPercent": None, "memoryBytes": None, "diskBytes": None},
        "players": {"online": None, "max": None}}
    s.poller.seed({"i0": persisted})
    await s.poller.poll_once()
    state = s.poller.state("i0")
    assert state is not None and state["since"] == "2026-01-01T00:00:00Z" and s.changes.calls == []
    s.agents["i0"].phase = "stopping"
    new = await s.poller.poll_now("i0", AgentEndpoint(f"{NODE}/i/i0", "token-i0"), "active")
    assert new["phase"] == "stopping" and s.changes.phases("i0") == ["stopping"]


def test_timeout_must_be_shorter_than_the_interval() -> None:
    s = Setup()
    with pytest.raises(ValueError, match="timeout"):
        Poller(s.client, s.targets, interval=1.0, timeout=1.0)
