"""The audit log: security events recorded with their transaction, read by admins only."""

from __future__ import annotations

from tests.auth.conftest import Api


async def test_security_events_are_in_the_audit_log_for_admins(api: Api) -> None:
    user = await api.user("ned@example.com")
    await api.client.post("/api/auth/login", json={"email": "ned@example.com", "password": "wrong password"})
    a = user["refreshToken"]
    await api.refresh(a)
    await api.refresh(a)  # reuse
    key = (await api.client.post("/api/auth/api-keys", json={"name": "ci"},
                                 headers=(await api.user("oz@example.com"))["headers"])).json()
    oz = await api.login("oz@example.com")
    await api.client.delete(f"/api/auth/api-keys/{key['apiKey']['id']}",
                            headers={"Authorization": f"Bearer {oz['accessToken']}"})
    await api.client.post("/api/auth/password/forgot", json={"email": "ned@example.com"})
    await api.mails_to("ned@example.com")

    r = await api.client.get("/api/admin/audit", headers={"Authorization": f"Bearer {oz['accessToken']}"})
    assert r.status_code == 403 and r.json()["error"] == "admin_only"
    admin = await api.admin()
    r = await api.client.get("/api/admin/audit", params={"limit": 500}, headers=admin["headers"])
    assert r.status_code == 200
    events = r.json()["events"]
    kinds = {e["kind"] for e in events}
    assert {"register", "login", "login_failed", "token_reuse", "api_key_created", "api_key_revoked",
            "password_reset_requested"} <= kinds
    failed = next(e for e in events if e["kind"] == "login_failed")
    assert failed["userId"] == user["user"]["id"] and failed["address"] == "127.0.0.1"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True), "newest first"
    r = await api.client.get("/api/admin/audit", params={"kind": "token_reuse"}, headers=admin["headers"])
    assert [e["kind"] for e in r.json()["events"]] == ["token_reuse"]


async def test_a_password_reset_is_audited(api: Api) -> None:
    await api.register("pat@example.com")
    await api.client.post("/api/auth/password/forgot", json={"email": "pat@example.com"})
    mail = (await api.mails_to("pat@example.com"))[0]
    token = mail.get_content().split("#token=")[1].split()[0]
    r = await api.client.post("/api/auth/password/reset", json={"token": token, "password": "new password!"})
    assert r.status_code == 204
    admin = await api.admin()
    r = await api.client.get("/api/admin/audit", params={"kind": "password_reset"}, headers=admin["headers"])
    assert len(r.json()["events"]) == 1
