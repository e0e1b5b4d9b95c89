"""The client and the poller against real ``gameplane agent`` processes on
loopback: a node agent hosting instances of the test templates, killed with
SIGKILL or frozen with SIGSTOP (a hung agent: the kernel still accepts TCP
connections, nobody answers). Short intervals keep these fast."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gameplane.agents.client import (
    AgentAuthFailed,
    AgentClient,
    AgentEndpoint,
    AgentRejected,
    AgentUnreachable,
    assert_agent_ready,
)
from gameplane.agents.poller import Poller, Target
from gameplane.agents.state import NormalizedState
from tests.agentctl import TEMPLATES, Agent, free_port, running_agent

# Workloads run as per-instance uids: only root can start these agents.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent tests switch uids: run as root")

INTERVAL = 0.5
TIMEOUT = 0.2
TOKEN = "instance-token-q1"


def sha256(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
async def client() -> AsyncIterator[AgentClient]:
    async with AgentClient(timeout=10, retries=0) as c:
        yield c


class Watch:
    """A poller on one instance, with every event timestamped."""

    def __init__(self, client: AgentClient, ep: AgentEndpoint, instance_id: str = "q1"):
        self.events: list[tuple[float, NormalizedState]] = []
        self.instance_id = instance_id
        self.ep = ep

        async def targets() -> list[Target]:
            return [Target(instance_id, ep, "active")]

        async def on_change(iid: str, new: NormalizedState, previous: NormalizedState | None) -> None:
            self.events.append((time.monotonic(), new))

        self.poller = Poller(client, targets, on_change, interval=INTERVAL, timeout=TIMEOUT,
                             max_backoff=2 * INTERVAL)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self.task = asyncio.create_task(self.poller.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.poller.shutdown()
        assert self.task is not None and self.task.done()

    async def until(self, predicate: Callable[[NormalizedState], bool], timeout: float = 15,
                    what: str = "") -> NormalizedState:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.poller.state(self.instance_id)
            if state is not None and predicate(state):
                return state
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}: {self.poller.state(self.instance_id)}; "
                             f"events {[e['phase'] for _, e in self.events]}")

    def phases(self, after: float = 0.0) -> list[str]:
        phases: list[str] = []
        for at, state in self.events:
            if at >= after and (not phases or phases[-1] != state["phase"]):
                phases.append(state["phase"])
        return phases


async def create(client: AgentClient, node: Agent, template: str = "quitter",
                 instance_id: str = "q1") -> AgentEndpoint:
    instance = await client.create_instance(AgentEndpoint(node.url, node.token), instance_id, template,
                                            sha256(TOKEN))
    assert instance["baseUrl"] == f"/i/{instance_id}"
    return AgentEndpoint(node.url + instance["baseUrl"], TOKEN)


async def test_the_poller_follows_an_instance_from_stopped_to_running(node: Agent,
                                                                      client: AgentClient) -> None:
    ep = await create(client, node)
    async with Watch(client, ep) as watch:
        stopped = await watch.until(lambda s: s["phase"] == "stopped" and s["ready"], what="stopped")
        assert stopped["reachable"] and not stopped["online"] and stopped["resources"] is not None
        await client.start(ep)
        running = await watch.until(lambda s: s["phase"] == "running", what="running")
        assert running["ready"] and running["online"] and running["since"] >= stopped["since"]
        phases = [p for p in watch.phases() if p != "unreachable"]  # a slow answer on a busy machine
        assert phases[0] == "stopped" and phases[-1] == "running"
        assert set(phases[1:-1]) <= {"starting"}
        await client.console_command(ep, "now")  # quitter reads one line and exits
        await watch.until(lambda s: s["phase"] != "running", what="the workload to end")


async def test_a_killed_agent_is_unreachable_within_two_intervals(node: Agent, client: AgentClient) -> None:
    ep = await create(client, node)
    async with Watch(client, ep) as watch:
        await watch.until(lambda s: s["ready"], what="ready")
        killed_at = time.monotonic()
        node.sigkill()
        state = await watch.until(lambda s: s["phase"] == "unreachable", timeout=5, what="unreachable")
        elapsed = time.monotonic() - killed_at
        print(f"SIGKILL -> unreachable in {elapsed:.3f}s")
        assert elapsed <= 2 * INTERVAL, f"unreachable after {elapsed:.2f}s"
        assert not state["ready"] and not state["online"] and not state["reachable"]
        assert state["reason"] is not None and "unreachable" in state["reason"]
        await asyncio.sleep(3 * INTERVAL)
        assert all(not s["ready"] for at, s in watch.events if at > killed_at)


async def test_a_hung_agent_is_unreachable_within_two_intervals_never_ready_and_recovers(
        node: Agent, client: AgentClient) -> None:
    """SIGSTOP: connections are still accepted by the kernel, never answered."""
    ep = await create(client, node)
    assert node.proc is not None
    async with Watch(client, ep) as watch:
        await watch.until(lambda s: s["ready"], what="ready")
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            state = await watch.until(lambda s: s["phase"] == "unreachable", timeout=5, what="unreachable")
            elapsed = time.monotonic() - stopped_at
            print(f"SIGSTOP -> unreachable in {elapsed:.3f}s")
            assert elapsed <= 2 * INTERVAL, f"unreachable after {elapsed:.2f}s"
            assert not state["ready"] and not state["reachable"]
            assert state["reason"] is not None and "did not answer" in state["reason"]
            await asyncio.sleep(4 * INTERVAL)
            hung = [s for at, s in watch.events if at > stopped_at]
            assert hung and all(not s["ready"] for s in hung)
            current = watch.poller.state("q1")
            assert current is not None and current["phase"] == "unreachable" and not current["ready"]
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        state = await watch.until(lambda s: s["phase"] == "stopped" and s["ready"], timeout=10,
                                  what="recovery")
        assert state["reachable"]
        print(f"SIGCONT -> ready again in {time.monotonic() - resumed_at:.3f}s")
        assert time.monotonic() - resumed_at <= 4 * INTERVAL + 1  # backoff is capped at two intervals


# -- the client's mapping of real agent answers --------------------------------------------------------
async def test_real_agent_errors_map_to_envelopes(node: Agent, client: AgentClient) -> None:
    node_ep = AgentEndpoint(node.url, node.token)
    ep = await create(client, node)
    assert (await assert_agent_ready(client, ep))["ready"] is True
    assert (await client.health(ep)) == {"status": "ok"}
    assert (await client.status(ep))["phase"] == "stopped"

    with pytest.raises(AgentAuthFailed) as auth:
        await client.status(AgentEndpoint(ep.base_url, "wrong-token"))
    assert (auth.value.status, auth.value.code) == (502, "agent_auth_failed")
    assert auth.value.details["agent"]["error"] == "invalid_token"

    with pytest.raises(AgentRejected) as not_running:
        await client.stop(ep)
    assert (not_running.value.status, not_running.value.code) == (409, "not_running")

    with pytest.raises(AgentRejected) as invalid:
        await client.console_command(ep, "two\nlines")
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_command")

    with pytest.raises(AgentRejected) as exists:
        await create(client, node)
    assert exists.value.envelope() == {"error": "instance_exists", "details": {"id": "q1"}}

    with pytest.raises(AgentRejected) as no_template:
        await create(client, node, template="no-such-game", instance_id="q2")
    assert (no_template.value.status, no_template.value.code) == (404, "template_not_found")

    listing = await client.list_instances(node_ep)
    assert [i["id"] for i in listing["instances"]] == ["q1"]
    await client.delete_instance(node_ep, "q1")
    with pytest.raises(AgentRejected) as gone:
        await client.status(ep)
    assert (gone.value.status, gone.value.code) == (404, "instance_not_found")
    await client.delete_instance(node_ep, "q1", missing_ok=True)

    port = free_port()
    with pytest.raises(AgentUnreachable):
        await client.status(AgentEndpoint(f"http://127.0.0.1:{port}", TOKEN))


async def test_a_single_instance_agent_at_the_root(data_dir: Path, client: AgentClient) -> None:
    args = ["--template", str(TEMPLATES / "quitter.toml")]
    with running_agent(data_dir, TOKEN, args) as agent:
        ep = AgentEndpoint(agent.url, TOKEN)
        assert (await client.get_agent_ready(ep)).ready
        assert (await client.status(ep))["phase"] == "stopped"
