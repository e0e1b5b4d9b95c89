"""Provisioning decides on semantic readiness only: the instance service with
a stand-in provider (the seam) and real HTTP agents that answer well or badly,
on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from aiohttp import web

from gameplane.agents.client import AgentClient, AgentUnreachable
from gameplane.auth.principal import Principal
from gameplane.db.engine import create_engine, create_session_factory, transaction
from gameplane.db.users import create_user
from gameplane.events.broker import Broker
from gameplane.events.service import EventLog
from gameplane.instances.service import InstanceService
from gameplane.providers.base import Placement, ProvisionSpec
from gameplane.templates import list_templates
from gameplane.templates.model import Template


class StandInProvider:
    """Places nothing and points every instance at ``agent_url``."""

    name = "stand-in"

    def __init__(self, agent_url: str, fail_with: Exception | None = None):
        self.agent_url = agent_url
        self.fail_with = fail_with
        self.created: list[str] = []
        self.destroyed: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def place(self, template: Template, taken_ports: Iterable[int], committed_memory: int) -> dict[str, int]:
        return {name: 40000 + i for i, name in enumerate(template.ports)}

    async def create(self, spec: ProvisionSpec) -> Placement:
        if self.fail_with is not None:
            raise self.fail_with
        self.created.append(spec.instance_id)
        return Placement(self.agent_url, "stand-in", spec.ports)

    async def destroy(self, instance_id: str) -> None:
        self.destroyed.append(instance_id)

    async def instance_ids(self) -> set[str]:
        return set(self.created) - set(self.destroyed)


async def agent_answering(ready: web.Response) -> tuple[web.AppRunner, str]:
    async def ready_route(request: web.Request) -> web.Response:
        return ready

    app = web.Application()
    app.router.add_get("/ready", ready_route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def world(fresh_database_url: str) -> AsyncIterator[dict[str, Any]]:
    engine = create_engine(fresh_database_url)
    sessions = create_session_factory(engine)
    async with transaction(sessions) as session:
        user = await create_user(session, "owner@example.com", "long enough password", "user")
    client = AgentClient(timeout=0.5, retries=0)
    yield {"sessions": sessions, "client": client, "principal": Principal(user.id, "user")}
    await client.aclose()
    await engine.dispose()


async def provision(world: dict[str, Any], provider: StandInProvider) -> dict[str, Any]:
    service = InstanceService(world["sessions"], provider, world["client"],
                              EventLog(world["sessions"], Broker()), list_templates([]),
                              provision_timeout=1.5)
    row = await service.create(world["principal"], "game", "probe me", "freeciv", {})
    task = service._provisioning[row.id]
    await task
    stored = await service.get(world["principal"], row.id, "game")
    return {**service.to_json(stored), "lifecycle": stored.lifecycle}


@pytest.mark.parametrize(("answer", "why"), [
    (web.json_response({"ready": False, "reason": "installing"}), "200 with ready false"),
    (web.Response(text="<html>ok</html>", content_type="text/html"), "200 that is not JSON"),
    (web.json_response({"ready": "yes"}), "ready that is not exactly true"),
    (web.json_response({"error": "boom", "details": None}, status=500), "a 5xx"),
])
async def test_an_agent_that_is_not_semantically_ready_fails_the_provisioning(
        world: dict[str, Any], answer: web.Response, why: str) -> None:
    runner, url = await agent_answering(answer)
    try:
        provider = StandInProvider(url)
        server = await provision(world, provider)
    finally:
        await runner.cleanup()
    assert server["lifecycle"] == server["state"]["phase"] == "failed", why
    assert server["state"]["reason"] == "not ready within 1.5s"
    assert provider.destroyed == provider.created, "the agent instance is destroyed"


async def test_a_semantically_ready_agent_makes_the_instance_active(world: dict[str, Any]) -> None:
    runner, url = await agent_answering(web.json_response({"ready": True, "phase": "stopped"}))
    try:
        provider = StandInProvider(url)
        server = await provision(world, provider)
    finally:
        await runner.cleanup()
    assert server["lifecycle"] == "active" and provider.destroyed == []


async def test_a_host_that_cannot_create_fails_with_its_reason(world: dict[str, Any]) -> None:
    provider = StandInProvider("http://127.0.0.1:9", AgentUnreachable(details={"reason": "refused"}))
    server = await provision(world, provider)
    assert server["state"]["phase"] == "failed"
    assert server["state"]["reason"].startswith("agent_unreachable")
