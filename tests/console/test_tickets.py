"""Console tickets on both databases, through the in-process API: issued only to
who may reach the server, stored hashed, single use even when raced, bound to
server and credential, expiring; and the grant re-check that keeps an open
console honest. The websocket itself is tested against real servers in
tests/api/test_console_proxy.py."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import select, update

from gameplane.console.bucket import TokenBucket
from gameplane.console.service import ConsoleService, origin_of
from gameplane.db.engine import transaction
from gameplane.db.models import ConsoleTicket, Instance
from gameplane.errors import GameplaneError
from tests.auth.conftest import Api, MakeApi, bearer
from tests.auth.test_ownership import _instance


def console(api: Api) -> ConsoleService:
    svc: ConsoleService = api.app.state.console
    return svc


async def ticket(api: Api, server: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.client.post(f"/api/game/servers/{server}/console/ticket", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def refused(work: Any) -> GameplaneError:
    with pytest.raises(GameplaneError) as caught:
        await work
    return caught.value


async def test_a_ticket_is_short_lived_hashed_and_names_its_websocket(api: Api) -> None:
    a = await api.user("a@example.com")
    server = await _instance(api, a["user"]["id"], "game")
    body = await ticket(api, server, a["headers"])
    assert set(body) == {"ticket", "expiresAt", "url"}
    assert body["url"] == f"wss://panel.example.com/api/game/servers/{server}/console?ticket={body['ticket']}"
    expires = datetime.fromisoformat(body["expiresAt"])
    assert timedelta(seconds=25) < expires - datetime.now(UTC) <= timedelta(seconds=30)
    assert len(body["ticket"]) >= 43  # 256 bits, URL-safe
    async with api.sessions() as db:
        rows = list((await db.execute(select(ConsoleTicket))).scalars())
    assert [r.token_hash for r in rows] == [hashlib.sha256(body["ticket"].encode()).hexdigest()]
    claims = jwt.decode(a["accessToken"], options={"verify_signature": False})
    assert rows[0].auth_expires_at == datetime.fromtimestamp(claims["exp"], UTC), "bound to the token's life"
    assert rows[0].session_id == claims["sid"] and rows[0].api_key_id is None


async def test_only_who_may_reach_the_server_gets_a_ticket(api: Api) -> None:
    a = await api.user("a@example.com")
    b = await api.user("b@example.com")
    server = await _instance(api, a["user"]["id"], "game")
    for who, target in ((b, server), (a, "nosuchserver"), (a, await _instance(api, a["user"]["id"], "dev"))):
        r = await api.client.post(f"/api/game/servers/{target}/console/ticket", headers=who["headers"])
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await api.client.post(f"/api/game/servers/{server}/console/ticket")
    assert r.status_code == 401
    async with transaction(api.sessions) as db:
        await db.execute(update(Instance).where(Instance.id == server).values(lifecycle="suspended"))
    r = await api.client.post(f"/api/game/servers/{server}/console/ticket", headers=a["headers"])
    assert r.status_code == 409 and r.json()["error"] == "instance_suspended"
    admin = await api.admin()
    async with transaction(api.sessions) as db:
        await db.execute(update(Instance).where(Instance.id == server).values(lifecycle="active"))
    await ticket(api, server, admin["headers"])


async def test_a_ticket_opens_once_even_when_raced_and_only_its_server(api: Api) -> None:
    a = await api.user("a@example.com")
    server = await _instance(api, a["user"]["id"], "game")
    other = await _instance(api, a["user"]["id"], "game", "another")
    svc = console(api)
    t = (await ticket(api, server, a["headers"]))["ticket"]
    # Shown at another server's URL it is refused and not used up.
    assert (await refused(svc.redeem(other, t))).code == "invalid_ticket"
    assert (await refused(svc.redeem(server, "forged" + t[6:]))).code == "invalid_ticket"
    outcomes = await asyncio.gather(*(svc.redeem(server, t) for _ in range(8)), return_exceptions=True)
    grants = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(grants) == 1, outcomes
    assert {o.code for o in outcomes if isinstance(o, GameplaneError)} == {"ticket_used"}
    assert grants[0].user_id == a["user"]["id"] and grants[0].instance_id == server
    assert (await refused(svc.redeem(server, t))).status == 401


async def test_an_unused_ticket_expires(make_api: MakeApi) -> None:
    async with make_api(console_ticket_ttl="5") as api:
        a = await api.user("a@example.com")
        server = await _instance(api, a["user"]["id"], "game")
        svc = console(api)
        t = (await ticket(api, server, a["headers"]))["ticket"]
        svc.clock = lambda: datetime.now(UTC) + timedelta(seconds=6)
        error = await refused(svc.redeem(server, t))
        assert (error.code, error.status) == ("ticket_expired", 401)


async def test_the_grant_ends_with_its_session_its_key_or_its_server(api: Api) -> None:
    a = await api.user("a@example.com")
    server = await _instance(api, a["user"]["id"], "game")
    svc = console(api)
    grant = await svc.redeem(server, (await ticket(api, server, a["headers"]))["ticket"])
    assert (await svc.authorize(grant)).base_url == "http://127.0.0.1:9"

    key = (await api.client.post("/api/auth/api-keys", json={"name": "bot"}, headers=a["headers"])).json()
    key_grant = await svc.redeem(server, (await ticket(api, server, bearer(key["key"])))["ticket"])
    assert key_grant.api_key_id == key["apiKey"]["id"] and key_grant.expires_at is None
    await svc.authorize(key_grant)
    await api.client.delete(f"/api/auth/api-keys/{key['apiKey']['id']}", headers=a["headers"])
    assert (await refused(svc.authorize(key_grant))).code == "api_key_revoked"

    async with transaction(api.sessions) as db:
        await db.execute(update(Instance).where(Instance.id == server).values(lifecycle="deleting"))
    error = await refused(svc.authorize(grant))
    assert (error.code, error.status) == ("instance_deleting", 409)
    async with transaction(api.sessions) as db:
        await db.delete(await db.get_one(Instance, server))
    assert (await refused(svc.authorize(grant))).status == 404

    assert (await api.client.post("/api/auth/logout-all", headers=a["headers"])).status_code == 204
    assert (await refused(svc.authorize(grant))).code == "session_ended"


async def test_ticket_issuing_is_rate_limited_per_user(make_api: MakeApi) -> None:
    async with make_api(console_tickets_per_window="3") as api:
        a = await api.user("a@example.com")
        server = await _instance(api, a["user"]["id"], "game")
        for _ in range(3):
            await ticket(api, server, a["headers"])
        r = await api.client.post(f"/api/game/servers/{server}/console/ticket", headers=a["headers"])
        assert r.status_code == 429 and r.json()["error"] == "rate_limited" and r.headers["Retry-After"]


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() and not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3, "never more than the burst"


@pytest.mark.parametrize(("url", "origin"), [
    ("https://panel.example.com", "https://panel.example.com"),
    ("https://Panel.Example.com:443/base", "https://panel.example.com"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://[::1]:80/", "http://[::1]"),
])
def test_the_expected_origin_is_the_public_urls(url: str, origin: str) -> None:
    assert origin_of(url) == origin
