"""The API in process (lifespan run, httpx over ASGI) on the real database of
each backend, with a stand-in provider (no game servers) and a real SMTP
server (aiosmtpd) receiving its mail."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI

from gameplane.api.app import create_app
from gameplane.db.engine import transaction
from gameplane.db.users import create_user
from gameplane.settings import load_settings
from tests.agentctl import free_port
from tests.api.test_provisioning import StandInProvider

PUBLIC_URL = "https://panel.example.com"
PASSWORD = "long enough password"


class Inbox:
    """An aiosmtpd handler keeping every delivered message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture
def inbox() -> Any:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


class Api:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, inbox: Inbox):
        self.app = app
        self.client = client
        self.inbox = inbox

    @property
    def sessions(self) -> Any:
        return self.app.state.sessions

    async def register(self, address: str, password: str = PASSWORD) -> dict[str, Any]:
        r = await self.client.post("/api/auth/register", json={"email": address, "password": password})
        assert r.status_code == 201, r.text
        user: dict[str, Any] = r.json()["user"]
        return user

    async def login(self, address: str, password: str = PASSWORD) -> dict[str, Any]:
        r = await self.client.post("/api/auth/login", json={"email": address, "password": password})
        assert r.status_code == 200, r.text
        tokens: dict[str, Any] = r.json()
        return tokens

    async def user(self, address: str) -> dict[str, Any]:
        """Register and log in; the tokens, the user and ready-made headers."""
        user = await self.register(address)
        tokens = await self.login(address)
        return {**tokens, "user": user, "headers": bearer(tokens["accessToken"])}

    async def admin(self, address: str = "root@example.com") -> dict[str, Any]:
        async with transaction(self.sessions) as db:
            await create_user(db, address, PASSWORD, "admin")
        tokens = await self.login(address)
        return {**tokens, "headers": bearer(tokens["accessToken"])}

    async def refresh(self, token: str) -> httpx.Response:
        return await self.client.post("/api/auth/refresh", json={"refreshToken": token})

    async def me(self, access_token: str) -> httpx.Response:
        return await self.client.get("/api/me", headers=bearer(access_token))

    async def mails_to(self, address: str, count: int = 1) -> list[EmailMessage]:
        """The mail delivered to ``address`` once ``count`` have arrived (sent in the background)."""
        await self.app.state.auth.drain()
        for _ in range(100):
            if len(self.inbox.to(address)) >= count:
                break
            await asyncio.sleep(0.02)
        return self.inbox.to(address)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


MakeApi = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture
def make_api(fresh_database_url: str, tmp_path: Path, inbox: Any) -> MakeApi:
    handler, smtp_port = inbox

    @contextlib.asynccontextmanager
    async def make(**settings: str) -> AsyncIterator[Api]:
        env = {"GAMEPLANE_DATA_DIR": str(tmp_path / "data"), "GAMEPLANE_DATABASE_URL": fresh_database_url,
               "GAMEPLANE_PUBLIC_URL": PUBLIC_URL, "GAMEPLANE_SMTP_HOST": "127.0.0.1",
               "GAMEPLANE_SMTP_PORT": str(smtp_port), "GAMEPLANE_SMTP_FROM": "panel@example.com",
               **{f"GAMEPLANE_{k.upper()}": v for k, v in settings.items()}}
        app = create_app(load_settings(env), provider=StandInProvider("http://127.0.0.1:9"))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            yield Api(app, client, handler)

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> AsyncIterator[Api]:
    async with make_api() as instance:
        yield instance
