"""The API process (``gameplane api``, and the heart of ``gameplane up``).

Start-up order, reversed at shutdown: database (migrated under its lock) →
agent client → events and accounts (``app.state.auth``, which authenticates
every route's caller) → provider (finds or starts the local node agent) → instance
service, which repairs what a crash left (``recover``) → poller, seeded with
the persisted states so ``since`` survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.exceptions import HTTPException

from gameplane.agents.client import AgentClient, AgentEndpoint
from gameplane.agents.poller import Poller, Target
from gameplane.agents.state import NormalizedState
from gameplane.auth import views as auth_views
from gameplane.auth.mail import mailer_from_settings
from gameplane.auth.service import AuthService
from gameplane.backups import views as backup_views
from gameplane.console import views as console_views
from gameplane.console.service import ConsoleService
from gameplane.db.engine import create_engine_from_settings, create_session_factory, transaction
from gameplane.db.migrate import upgrade
from gameplane.db.models import Instance
from gameplane.errors import GameplaneError
from gameplane.events import views as event_views
from gameplane.events.broker import Broker
from gameplane.events.service import EventLog
from gameplane.files import views as file_views
from gameplane.instances import views as instance_views
from gameplane.instances.service import InstanceService
from gameplane.ops import views as ops_views
from gameplane.providers.base import Provider
from gameplane.providers.local import LocalProvider
from gameplane.settings import Settings
from gameplane.templates import list_templates

log = logging.getLogger(__name__)


def _targets(app: FastAPI) -> Any:
    async def targets() -> Sequence[Target]:
        async with app.state.sessions() as session:
            rows = (await session.execute(select(
                Instance.id, Instance.agent_url, Instance.agent_token, Instance.lifecycle,
                Instance.failure_reason))).all()
        return [Target(iid, AgentEndpoint(url, token) if url and lifecycle == "active" else None,
                       lifecycle, reason)
                for iid, url, token, lifecycle, reason in rows]

    return targets


def _on_change(app: FastAPI) -> Any:
    async def on_change(instance_id: str, new: NormalizedState, previous: NormalizedState | None) -> None:
        async with transaction(app.state.sessions) as session:
            row = await session.get(Instance, instance_id)
            if row is None:
                return
            row.state = dict(new)
            owner = row.owner_id
        await app.state.events.record("state", instance_id, owner, {"state": dict(new)})

    return on_change


def create_app(settings: Settings, provider: Provider | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upgrade(settings)
        engine = create_engine_from_settings(settings)
        app.state.sessions = create_session_factory(engine)
        client = AgentClient(timeout=settings.poll_timeout, pool_size=settings.poll_concurrency)
        app.state.client = client
        app.state.events = EventLog(app.state.sessions, Broker())
        app.state.auth = AuthService(settings, app.state.sessions, mailer_from_settings(settings))
        prov = provider or LocalProvider(settings, client)
        await prov.start()
        poller = Poller(client, _targets(app), _on_change(app), interval=settings.poll_interval,
                        timeout=settings.poll_timeout, concurrency=settings.poll_concurrency)
        app.state.poller = poller
        app.state.metrics = ops_views.metrics_registry(poller)
        service = InstanceService(app.state.sessions, prov, client, app.state.events,
                                  list_templates(settings.templates_dirs), settings.provision_timeout,
                                  poller=poller)
        app.state.instances = service
        app.state.console = ConsoleService(settings, app.state.sessions, service)
        await service.recover()
        service.start_reconciling(every=settings.reconcile_interval)
        async with app.state.sessions() as session:
            persisted = (await session.execute(select(Instance.id, Instance.state))).all()
        poller.seed({iid: state for iid, state in persisted if state})
        app.state.poller_task = asyncio.create_task(poller.run())
        try:
            yield
        finally:
            await poller.shutdown()
            await app.state.console.aclose()
            await service.shutdown()
            await prov.close()
            await client.aclose()
            await app.state.auth.shutdown()
            await engine.dispose()

    app = FastAPI(title="Gameplane", version="0.1.0", lifespan=lifespan,
                  description="Control plane for game servers. Errors: {\"error\", \"details\"}.")
    app.state.poller_task = None
    app.state.settings = settings
    for router in (auth_views.router, instance_views.router, backup_views.router, file_views.router,
                   console_views.router, event_views.router, ops_views.router):
        app.include_router(router)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GameplaneError)
    async def gameplane_error(request: Request, exc: GameplaneError) -> JSONResponse:
        return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid_request", "details": problems}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "details": {"path": request.url.path}},
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The user gets an opaque id; the log has the trace under the same id.
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse({"error": "internal_error", "details": {"errorId": error_id}}, status_code=500)
