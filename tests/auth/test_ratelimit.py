"""Rate limits on login, refresh, forgot and reset: per account and per client
address, answered 429 in the envelope with ``Retry-After``."""

from __future__ import annotations

import httpx
import pytest

from gameplane.auth.ratelimit import RateLimiter
from gameplane.errors import RateLimited
from tests.auth.conftest import PASSWORD, Api, MakeApi


def test_the_window_slides_and_a_refused_attempt_is_not_counted() -> None:
    now = [0.0]
    limiter = RateLimiter(window=60, clock=lambda: now[0])
    for t in (0, 10, 20):
        now[0] = t
        limiter.hit(("k", 3))
    now[0] = 30
    with pytest.raises(RateLimited) as refused:
        limiter.hit(("k", 3))
    assert refused.value.headers["Retry-After"] == "30" and refused.value.status == 429
    now[0] = 60.5  # the attempt at 0 left the window
    limiter.hit(("k", 3))
    with pytest.raises(RateLimited):
        limiter.hit(("k", 3))
    limiter.hit(("other", 3))


def _assert_429(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "rate_limited" and r.json()["details"]["retryAfter"] >= 1
    assert int(r.headers["retry-after"]) >= 1


async def _login(api: Api, address: str, **headers: str) -> httpx.Response:
    return await api.client.post("/api/auth/login", json={"email": address, "password": "wrong password"},
                                 headers=headers)


async def test_login_is_limited_per_account(make_api: MakeApi) -> None:
    async with make_api(rate_limit_per_account="3", rate_limit_per_address="100") as api:
        await api.register("ray@example.com")
        for _ in range(3):
            assert (await _login(api, "ray@example.com")).status_code == 401
        _assert_429(await _login(api, "RAY@example.com"))
        r = await api.client.post("/api/auth/login", json={"email": "ray@example.com", "password": PASSWORD})
        _assert_429(r)  # even the right password waits: that is what stops guessing
        assert (await _login(api, "sue@example.com")).status_code == 401, "other accounts are not blocked"


async def test_login_is_limited_per_address_and_forwarded_for_is_not_trusted(make_api: MakeApi) -> None:
    async with make_api(rate_limit_per_account="100", rate_limit_per_address="3") as api:
        for i in range(3):
            r = await _login(api, f"user{i}@example.com", **{"X-Forwarded-For": f"10.0.0.{i}"})
            assert r.status_code == 401
        _assert_429(await _login(api, "user9@example.com", **{"X-Forwarded-For": "10.0.0.9"}))


async def test_forwarded_for_counts_behind_a_trusted_proxy(make_api: MakeApi) -> None:
    async with make_api(rate_limit_per_account="100", rate_limit_per_address="1",
                        trusted_proxies="127.0.0.1") as api:
        for i in range(3):
            r = await _login(api, "x@example.com", **{"X-Forwarded-For": f"6.6.6.6, 10.0.0.{i}"})
            assert r.status_code == 401, "each client behind the proxy has its own window"
        _assert_429(await _login(api, "x@example.com", **{"X-Forwarded-For": "10.0.0.0"}))


async def test_refresh_forgot_and_reset_are_limited(make_api: MakeApi) -> None:
    async with make_api(rate_limit_per_account="2", rate_limit_per_address="2") as api:
        calls = {
            "/api/auth/refresh": {"refreshToken": "nope"},
            "/api/auth/password/forgot": {"email": "zed@example.com"},
            "/api/auth/password/reset": {"token": "nope", "password": "long enough password"},
        }
        for path, body in calls.items():
            for _ in range(2):
                assert (await api.client.post(path, json=body)).status_code != 429, path
            _assert_429(await api.client.post(path, json=body))
