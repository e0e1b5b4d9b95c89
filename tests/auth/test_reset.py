"""Password reset and its mail, through a real SMTP server (aiosmtpd), on both databases."""

from __future__ import annotations

import re
import statistics
import time
from datetime import timedelta
from email.message import EmailMessage

from sqlalchemy import select, update

from gameplane.db.models import PasswordReset, utcnow
from tests.auth.conftest import PASSWORD, PUBLIC_URL, Api

NEW_PASSWORD = "a fresh new password"
_LINK = re.compile(r"(https?://\S+/reset-password#token=(\S+))")


def _link(mail: EmailMessage) -> tuple[str, str]:
    body = mail.get_content()
    found = _LINK.search(body)
    assert found, body
    return found.group(1), found.group(2)


async def _forgot(api: Api, address: str, **headers: str) -> tuple[int, object]:
    r = await api.client.post("/api/auth/password/forgot", json={"email": address}, headers=headers)
    return r.status_code, r.json()


async def _reset_token(api: Api, address: str, count: int = 1) -> str:
    await _forgot(api, address)
    mails = await api.mails_to(address, count)
    assert len(mails) == count
    return _link(mails[-1])[1]


async def _reset(api: Api, token: str, password: str = NEW_PASSWORD) -> int:
    r = await api.client.post("/api/auth/password/reset", json={"token": token, "password": password})
    return r.status_code


async def test_forgot_answers_the_same_for_known_and_unknown_accounts(api: Api) -> None:
    await api.register("ann@example.com")
    known = await _forgot(api, "ann@example.com")
    unknown = await _forgot(api, "nobody@example.com")
    assert known == unknown and known[0] == 202
    assert len(await api.mails_to("ann@example.com")) == 1
    assert await api.mails_to("nobody@example.com") == []


async def test_forgot_takes_similar_time_for_known_and_unknown_accounts(make_api: object) -> None:
    """Alternating requests; the medians differ by less than 20 ms (the lookup, the
    token and the mail happen after the answer)."""
    async with make_api(rate_limit_per_address="1000", rate_limit_per_account="1000") as api:  # type: ignore[operator]
        await api.register("tim@example.com")
        timings: dict[str, list[float]] = {"tim@example.com": [], "ghost@example.com": []}
        for _ in range(15):
            for address, seen in timings.items():
                started = time.perf_counter()
                await _forgot(api, address)
                seen.append(time.perf_counter() - started)
                await api.app.state.auth.drain()
        known, unknown = (statistics.median(t) for t in timings.values())
        assert abs(known - unknown) < 0.020, (known, unknown)


async def test_the_link_comes_from_the_public_url_not_the_host_header(api: Api) -> None:
    await api.register("ben@example.com")
    await _forgot(api, "ben@example.com", Host="evil.example", **{"X-Forwarded-Host": "evil.example"})
    mail = (await api.mails_to("ben@example.com"))[0]
    link, token = _link(mail)
    assert link.startswith(PUBLIC_URL + "/") and "evil" not in mail.get_content()
    assert mail["From"] == "panel@example.com"
    assert len(token) == 43, "32 random bytes, URL-safe base64"
    async with api.sessions() as db:
        stored = list((await db.execute(select(PasswordReset.token_hash))).scalars())
    assert token not in stored and len(stored) == 1, "stored hashed"


async def test_a_reset_sets_the_password_ends_sessions_and_notifies(api: Api) -> None:
    session = await api.user("cat@example.com")
    token = await _reset_token(api, "cat@example.com")
    assert await _reset(api, token) == 204
    r = await api.client.post("/api/auth/login", json={"email": "cat@example.com", "password": PASSWORD})
    assert r.status_code == 401
    await api.login("cat@example.com", NEW_PASSWORD)
    assert (await api.me(session["accessToken"])).status_code == 401
    assert (await api.refresh(session["refreshToken"])).status_code == 401
    mails = await api.mails_to("cat@example.com", 2)
    assert "password was changed" in mails[-1]["Subject"]


async def test_a_reset_token_works_once(api: Api) -> None:
    await api.register("dan@example.com")
    token = await _reset_token(api, "dan@example.com")
    assert await _reset(api, token) == 204
    r = await api.client.post("/api/auth/password/reset",
                              json={"token": token, "password": "yet another one"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_reset_token"
    await api.login("dan@example.com", NEW_PASSWORD)


async def test_a_newer_reset_token_kills_the_older(api: Api) -> None:
    await api.register("eve@example.com")
    older = await _reset_token(api, "eve@example.com")
    newer = await _reset_token(api, "eve@example.com", count=2)
    assert await _reset(api, older) == 400
    assert await _reset(api, newer) == 204


async def test_a_password_change_kills_the_reset_token(api: Api) -> None:
    session = await api.user("fin@example.com")
    token = await _reset_token(api, "fin@example.com")
    r = await api.client.post("/api/auth/password/change", headers=session["headers"],
                              json={"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD})
    assert r.status_code == 204
    assert await _reset(api, token, "attacker's choice") == 400


async def test_an_expired_reset_token_is_refused(api: Api) -> None:
    await api.register("gus@example.com")
    token = await _reset_token(api, "gus@example.com")
    async with api.sessions() as db, db.begin():
        await db.execute(update(PasswordReset).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert await _reset(api, token) == 400


async def test_reset_tokens_expire_within_the_hour(api: Api) -> None:
    await api.register("hid@example.com")
    await _reset_token(api, "hid@example.com")
    async with api.sessions() as db:
        row = (await db.execute(select(PasswordReset))).scalar_one()
    assert row.expires_at - row.created_at <= timedelta(hours=1)


async def test_a_reset_token_is_not_an_access_token(api: Api) -> None:
    await api.register("ida@example.com")
    token = await _reset_token(api, "ida@example.com")
    r = await api.me(token)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert await _reset(api, token) == 204, "and it was a live reset token"
