"""API keys: created and revoked by the user, shown once, stored hashed, and
unable to manage credentials."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from gameplane.db.models import ApiKey
from tests.auth.conftest import Api, bearer


async def test_a_key_is_shown_once_stored_hashed_and_authenticates(api: Api) -> None:
    user = await api.user("kit@example.com")
    r = await api.client.post("/api/auth/api-keys", json={"name": "ci"}, headers=user["headers"])
    assert r.status_code == 201
    key, shown = r.json()["key"], r.json()["apiKey"]
    assert key.startswith("gpk_") and len(key) >= 4 + 43 and shown["prefix"] == key[:10]
    listing = (await api.client.get("/api/auth/api-keys", headers=user["headers"])).text
    assert key not in listing and shown["id"] in listing
    async with api.sessions() as db:
        stored = (await db.execute(select(ApiKey.key_hash))).scalar_one()
    assert stored == hashlib.sha256(key.encode()).hexdigest()
    me = await api.client.get("/api/me", headers=bearer(key))
    assert me.status_code == 200 and me.json()["via"] == "api_key"
    assert me.json()["user"]["id"] == user["user"]["id"]


async def test_a_revoked_key_stops_working(api: Api) -> None:
    user = await api.user("lee@example.com")
    r = await api.client.post("/api/auth/api-keys", json={"name": "ci"}, headers=user["headers"])
    created = r.json()
    r = await api.client.delete(f"/api/auth/api-keys/{created['apiKey']['id']}", headers=user["headers"])
    assert r.status_code == 204
    assert (await api.client.get("/api/me", headers=bearer(created["key"]))).status_code == 401
    r = await api.client.delete(f"/api/auth/api-keys/{created['apiKey']['id']}", headers=user["headers"])
    assert r.status_code == 404


async def test_a_key_cannot_manage_credentials(api: Api) -> None:
    user = await api.user("max@example.com")
    key = (await api.client.post("/api/auth/api-keys", json={"name": "ci"},
                                 headers=user["headers"])).json()["key"]
    for path, body in (("/api/auth/api-keys", {"name": "more"}), ("/api/auth/logout-all", None),
                       ("/api/auth/password/change", {"currentPassword": "x", "newPassword": "y" * 10})):
        r = await api.client.post(path, json=body, headers=bearer(key))
        assert r.status_code == 401 and r.json()["error"] == "login_required", path
