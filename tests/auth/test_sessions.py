"""Accounts, access tokens and refresh-token sessions, on both databases."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import select, update

from gameplane.auth.tokens import AUDIENCE
from gameplane.db.models import AuthSession, RefreshToken, User, utcnow
from tests.auth.conftest import PASSWORD, PUBLIC_URL, Api, MakeApi, bearer

SECRET = "a-test-secret-key-that-is-long-enough-for-production"


async def test_register_login_me_and_the_password_is_argon2id(api: Api) -> None:
    user = await api.register("Alice@Example.com")
    assert user["email"] == "alice@example.com" and user["role"] == "user"
    tokens = await api.login("alice@example.com")
    assert tokens["tokenType"] == "bearer" and tokens["expiresIn"] <= 900
    r = await api.me(tokens["accessToken"])
    assert r.status_code == 200 and r.json()["user"] == user
    async with api.sessions() as db:
        stored = (await db.execute(select(User.password_hash).where(User.id == user["id"]))).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_a_wrong_password_or_unknown_account_is_the_same_401(api: Api) -> None:
    await api.register("bob@example.com")
    login = "/api/auth/login"
    wrong = await api.client.post(login, json={"email": "bob@example.com", "password": "nope" * 3})
    unknown = await api.client.post(login, json={"email": "who@example.com", "password": "x" * 9})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": "invalid_credentials", "details": None}


async def test_the_access_token_is_a_short_pinned_jwt_naming_its_session(api: Api) -> None:
    tokens = (await api.user("carol@example.com"))["accessToken"]
    header = jwt.get_unverified_header(tokens)
    claims = jwt.decode(tokens, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert claims["iss"] == PUBLIC_URL and claims["aud"] == AUDIENCE and claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] <= 900 and claims["jti"] and claims["sub"]
    async with api.sessions() as db:
        assert await db.get(AuthSession, claims["sid"]) is not None


def _forge(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if header["alg"] == "none":
        return signing_input + "."
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[str(header["alg"])]
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), digest).digest())}"


async def test_forged_and_foreign_tokens_are_refused(api: Api) -> None:
    """Tokens built on a genuine one's claims: ``alg: none``, another algorithm with the
    right key, another audience, issuer or ``typ``, expired — each is a 401."""
    session = await api.user("dave@example.com")
    genuine = session["accessToken"]
    claims = jwt.decode(genuine, options={"verify_signature": False})
    key = api.app.state.auth.tokens._key
    assert (await api.me(_forge({"alg": "HS256", "typ": "JWT"}, claims, key))).status_code == 200, \
        "the forging itself is right"
    now = int(time.time())
    forged = {
        "alg none": _forge({"alg": "none", "typ": "JWT"}, claims, key),
        "HS512": _forge({"alg": "HS512", "typ": "JWT"}, claims, key),
        "other audience": _forge({"alg": "HS256"}, {**claims, "aud": "another-api"}, key),
        "other issuer": _forge({"alg": "HS256"}, {**claims, "iss": "https://evil.example"}, key),
        "reset typ": _forge({"alg": "HS256"}, {**claims, "typ": "reset"}, key),
        "no sid": _forge({"alg": "HS256"}, {k: v for k, v in claims.items() if k != "sid"}, key),
        "expired": _forge({"alg": "HS256"}, {**claims, "iat": now - 2000, "exp": now - 1000}, key),
        "other key": _forge({"alg": "HS256"}, claims, SECRET.encode()),
        "the refresh token": session["refreshToken"],
    }
    for why, token in forged.items():
        r = await api.me(token)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", why
        assert r.json()["error"] in ("invalid_token", "token_expired"), why


async def test_no_bearer_is_401_in_the_envelope(api: Api) -> None:
    for headers in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer "}):
        r = await api.client.get("/api/game/servers", headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


async def test_refresh_rotates_and_a_replay_revokes_the_family(api: Api) -> None:
    """Rotate A→B; replay A → 401; then B → 401, and B's access token → 401."""
    first = await api.user("erin@example.com")
    a = first["refreshToken"]
    r = await api.refresh(a)
    assert r.status_code == 200
    b, b_access = r.json()["refreshToken"], r.json()["accessToken"]
    assert b != a and (await api.me(b_access)).status_code == 200
    replay = await api.refresh(a)
    assert replay.status_code == 401 and replay.json()["error"] == "token_reused"
    assert (await api.refresh(b)).status_code == 401
    assert (await api.me(b_access)).status_code == 401
    assert (await api.me(first["accessToken"])).status_code == 401


async def test_refresh_tokens_are_random_and_stored_hashed(api: Api) -> None:
    token = (await api.user("fay@example.com"))["refreshToken"]
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    async with api.sessions() as db:
        stored = list((await db.execute(select(RefreshToken.token_hash))).scalars())
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored


async def test_parallel_refreshes_with_one_token_give_exactly_one_success(make_api: MakeApi) -> None:
    """50 refreshes with one token at once: one wins, the 49 others are reuses (and,
    being reuses, revoke the family: the winner's new token dies too)."""
    async with make_api(rate_limit_per_address="1000") as api:
        token = (await api.user("gil@example.com"))["refreshToken"]
        answers = await asyncio.gather(*(api.refresh(token) for _ in range(50)))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(200) == 1 and codes.count(401) == 49, codes
        winner = next(r.json() for r in answers if r.status_code == 200)
        assert (await api.refresh(winner["refreshToken"])).status_code == 401


async def test_a_session_expires_after_inactivity(api: Api) -> None:
    session = await api.user("hal@example.com")
    sid = jwt.decode(session["accessToken"], options={"verify_signature": False})["sid"]
    idle = api.app.state.auth.settings.session_idle_ttl
    async with api.sessions() as db, db.begin():
        await db.execute(update(AuthSession).where(AuthSession.id == sid)
                         .values(last_used_at=utcnow() - timedelta(seconds=idle + 1)))
    assert (await api.refresh(session["refreshToken"])).status_code == 401
    assert (await api.me(session["accessToken"])).status_code == 401


async def test_a_session_expires_absolutely_even_when_used(api: Api) -> None:
    session = await api.user("ivy@example.com")
    sid = jwt.decode(session["accessToken"], options={"verify_signature": False})["sid"]
    async with api.sessions() as db, db.begin():
        await db.execute(update(AuthSession).where(AuthSession.id == sid)
                         .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert (await api.refresh(session["refreshToken"])).status_code == 401


async def test_logout_revokes_the_family_only(api: Api) -> None:
    one = await api.user("jay@example.com")
    two = await api.login("jay@example.com")
    r = await api.client.post("/api/auth/logout", json={"refreshToken": one["refreshToken"]})
    assert r.status_code == 204
    assert (await api.refresh(one["refreshToken"])).status_code == 401
    assert (await api.me(one["accessToken"])).status_code == 401
    assert (await api.me(two["accessToken"])).status_code == 200, "the other session lives"
    assert (await api.refresh(two["refreshToken"])).status_code == 200


async def test_logout_everywhere_revokes_every_session(api: Api) -> None:
    one = await api.user("kim@example.com")
    two = await api.login("kim@example.com")
    r = await api.client.post("/api/auth/logout-all", headers=one["headers"])
    assert r.status_code == 204
    for session in (one, two):
        assert (await api.me(session["accessToken"])).status_code == 401
        assert (await api.refresh(session["refreshToken"])).status_code == 401


async def test_a_password_change_revokes_every_session(api: Api) -> None:
    one = await api.user("lou@example.com")
    two = await api.login("lou@example.com")
    body = {"currentPassword": "not it at all", "newPassword": "a brand new password"}
    r = await api.client.post("/api/auth/password/change", json=body, headers=one["headers"])
    assert r.status_code == 422 and r.json()["error"] == "wrong_password"
    body["currentPassword"] = PASSWORD
    r = await api.client.post("/api/auth/password/change", json=body, headers=one["headers"])
    assert r.status_code == 204
    for session in (one, two):
        assert (await api.me(session["accessToken"])).status_code == 401
        assert (await api.refresh(session["refreshToken"])).status_code == 401
    r = await api.client.post("/api/auth/login", json={"email": "lou@example.com", "password": PASSWORD})
    assert r.status_code == 401
    await api.login("lou@example.com", "a brand new password")


async def test_the_role_comes_from_the_account(api: Api) -> None:
    admin = await api.admin()
    assert (await api.me(admin["accessToken"])).json()["user"]["role"] == "admin"
    user = await api.user("mo@example.com")
    async with api.sessions() as db, db.begin():
        await db.execute(update(User).where(User.id == user["user"]["id"]).values(role="admin"))
    r = await api.client.get("/api/me", headers=bearer(user["accessToken"]))
    assert r.json()["user"]["role"] == "admin", "a role change applies to live tokens at once"


@pytest.mark.parametrize("path", ["/api/events", "/api/events?access_token=nope"])
async def test_the_events_stream_needs_a_valid_token(api: Api, path: str) -> None:
    r = await api.client.get(path)
    assert r.status_code == 401
