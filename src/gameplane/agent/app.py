"""The agent's HTTP surface: the per-instance contract of DESIGN.md section 3,
served at the root for one instance or under ``/i/<instance-id>`` by a node
agent, plus the node routes (``/instances``) behind the node token.

Routes parse, authorize and call one supervisor method; every error leaves as
the envelope ``{"error", "details"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gameplane.agent.auth import check_bearer, normalize_hash
from gameplane.agent.backups import routes as backup_routes
from gameplane.agent.backups.manager import BackupManager
from gameplane.agent.files import routes as file_routes
from gameplane.agent.registry import Registry
from gameplane.agent.supervisor import Supervisor
from gameplane.console import frames
from gameplane.errors import BadRequest, GameplaneError, NotImplementedYet, Unprocessable

log = logging.getLogger(__name__)

MAX_COMMAND = 4096
# Lines sent per turn of the event loop (and per frame with ?batch=1).
_BATCH_LINES = 256
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
Handler = Callable[[Request, Supervisor], Awaitable[Response]]


@dataclass
class AgentConfig:
    registry: Registry
    node_token_hash: str | None = None  # node mode when set
    single_instance: str | None = None  # single mode: the one instance id
    single_template: str | None = None
    single_token_hash: str | None = None
    single_variables: dict[str, str] | None = None
    single_ports: dict[str, int] | None = None
    files: file_routes.FileSettings = field(default_factory=file_routes.FileSettings)

    async def start(self) -> None:
        """Load the data dir; in single mode create the one instance on first run."""
        await self.registry.load()
        instance_id = self.single_instance
        if instance_id is None:
            return
        assert self.single_template and self.single_token_hash
        existing = self.registry.instances.get(instance_id)
        if existing is None:
            await self.registry.create(instance_id, self.single_template, self.single_token_hash,
                                       self.single_variables, self.single_ports)
        elif existing.files.config.token_hash != self.single_token_hash:
            # The token file is the source of truth: rotating it rotates the token.
            existing.files.config.token_hash = self.single_token_hash
            existing.files.save_config()


def _config(conn: HTTPConnection) -> AgentConfig:
    config: AgentConfig = conn.app.state.config
    return config


def _resolve(conn: HTTPConnection, authenticate: bool) -> Supervisor:
    config = _config(conn)
    instance_id = conn.path_params.get("instance_id") or config.single_instance
    if instance_id is None:
        raise BadRequest("no_instance")
    supervisor = config.registry.get(instance_id)
    if authenticate:
        check_bearer(conn.headers.get("authorization"), supervisor.files.config.token_hash)
    return supervisor


def instance_route(path: str, handler: Handler, methods: list[str], authenticate: bool = True) -> Route:
    async def endpoint(request: Request) -> Response:
        return await handler(request, _resolve(request, authenticate))

    return Route(path, endpoint, methods=methods)


async def read_json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest("invalid_json", {"reason": str(exc)}) from exc
    if not isinstance(data, dict):
        raise BadRequest("invalid_json", {"reason": "expected a JSON object"})
    return data


def validate_command(command: Any) -> str:
    if not isinstance(command, str) or not command.strip():
        raise Unprocessable("invalid_command", {"reason": "command must be a non-empty string"})
    if len(command) > MAX_COMMAND:
        raise Unprocessable("invalid_command", {"reason": f"longer than {MAX_COMMAND} characters"})
    if _CONTROL.search(command):
        raise Unprocessable("invalid_command", {"reason": "control characters (newlines) not allowed"})
    return command


# -- instance handlers ----------------------------------------------------------------
async def health(request: Request, sup: Supervisor) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request, sup: Supervisor) -> Response:
    if not sup.files.installed:
        return JSONResponse({"ready": False, "reason": "not installed"}, status_code=503)
    if sup.busy == "restore":
        return JSONResponse({"ready": False, "reason": "restoring"}, status_code=503)
    return JSONResponse({"ready": True, "phase": sup.phase, "busy": sup.busy, "seq": sup.seq})


async def status(request: Request, sup: Supervisor) -> Response:
    return JSONResponse(sup.status())


def power(action: str) -> Handler:
    async def handler(request: Request, sup: Supervisor) -> Response:
        if action == "kill":
            sup.kill()
        else:
            {"start": sup.request_start, "stop": sup.request_stop,
             "restart": sup.request_restart}[action]()
        return JSONResponse({"accepted": True, "operation": action, "phase": sup.phase,
                             "seq": sup.seq}, status_code=202)

    return handler


async def console_command(request: Request, sup: Supervisor) -> Response:
    body = await read_json_body(request)
    seq = await sup.send_command(validate_command(body.get("command")))
    return JSONResponse({"accepted": True, "seq": seq}, status_code=202)


def backup_route(path: str, handler: backup_routes.ManagerHandler, methods: list[str]) -> Route:
    async def endpoint(request: Request, sup: Supervisor) -> Response:
        return await handler(request, _config(request).registry.backup_manager(sup.files.id))

    return instance_route(path, endpoint, methods)


def file_route(path: str, handler: file_routes.FileHandler, methods: list[str]) -> Route:
    async def endpoint(request: Request, sup: Supervisor) -> Response:
        return await handler(request, file_routes.FileManager(sup, _config(request).files))

    return instance_route(path, endpoint, methods)


async def create_backup(request: Request, manager: BackupManager) -> Response:
    return await backup_routes.create_backup(request, manager, await read_json_body(request))


def not_yet(feature: str, issue: str) -> Handler:
    async def handler(request: Request, sup: Supervisor) -> Response:
        raise NotImplementedYet("not_implemented", {"feature": feature, "comesWith": issue})

    return handler


# -- console websocket ------------------------------------------------------------------
async def console_ws(websocket: WebSocket) -> None:
    try:
        sup = _resolve(websocket, authenticate=True)
        batch = websocket.query_params.get("batch") in ("1", "true")
        since_text = websocket.query_params.get("since")
        since = int(since_text) if since_text is not None else None
        if since is not None and since < 0:
            raise ValueError
    except GameplaneError as exc:
        await websocket.send_denial_response(JSONResponse(exc.envelope(), status_code=exc.status))
        return
    except ValueError:
        err = BadRequest("invalid_since", {"reason": "since must be a non-negative integer"})
        await websocket.send_denial_response(JSONResponse(err.envelope(), status_code=400))
        return
    await websocket.accept()
    buffer = sup.console
    # No ?since: replay what is buffered without calling the older lines a gap.
    cursor = since if since is not None else buffer.first_seq - 1

    async def pump() -> None:
        nonlocal cursor
        status_seq = -1
        while True:
            if sup.seq != status_seq:
                status_seq = sup.seq
                await websocket.send_text(json.dumps({"type": "status", "phase": sup.phase,
                                                      "reason": sup.reason, "busy": sup.busy}))
            gap, first, lines = buffer.read_after(cursor, limit=_BATCH_LINES)
            if gap is not None:
                await websocket.send_text(json.dumps({"type": "gap", "from": gap[0], "to": gap[1]}))
                cursor = gap[1]
            if lines:
                if batch:
                    await websocket.send_text(frames.batch(first, lines))
                else:
                    for offset, line in enumerate(lines):
                        await websocket.send_text(frames.output(first + offset, line))
                cursor = first + len(lines) - 1
                # A socket that always takes more would otherwise keep this loop
                # from yielding: the workload's reader, probes and every other
                # instance on the node would wait for the whole backlog.
                await asyncio.sleep(0)
            elif gap is None and sup.seq == status_seq:
                await buffer.wait_beyond(cursor)

    async def listen() -> None:
        while True:
            text = await websocket.receive_text()
            try:
                frame = json.loads(text)
                if not isinstance(frame, dict) or frame.get("type") != "command":
                    raise BadRequest("invalid_frame", {"expected": {"type": "command", "command": "..."}})
                seq = await sup.send_command(validate_command(frame.get("command")))
                await websocket.send_text(json.dumps({"type": "ack", "seq": seq}))
            except ValueError:
                await websocket.send_text(frames.error("invalid_json"))
            except GameplaneError as exc:
                await websocket.send_text(frames.error(exc.code, exc.details))

    tasks = [asyncio.create_task(pump()), asyncio.create_task(listen())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError):
                await task
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close()


def instance_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        instance_route("/health", health, ["GET"], authenticate=False),
        instance_route("/ready", ready, ["GET"]),
        instance_route("/status", status, ["GET"]),
        *(instance_route(f"/{a}", power(a), ["POST"]) for a in ("start", "stop", "restart", "kill")),
        instance_route("/console/command", console_command, ["POST"]),
        WebSocketRoute("/console/ws", console_ws),
        backup_route("/backups", backup_routes.list_backups, ["GET"]),
        backup_route("/backups", create_backup, ["POST"]),
        backup_route("/backups/restore", backup_routes.restore_backup, ["POST"]),
        backup_route("/backups/{backup_id}", backup_routes.delete_backup, ["DELETE"]),
        backup_route("/backups/{backup_id}/download", backup_routes.download_backup, ["GET"]),
        backup_route("/backups/{backup_id}/lock", backup_routes.lock_backup(True), ["POST"]),
        backup_route("/backups/{backup_id}/unlock", backup_routes.lock_backup(False), ["POST"]),
        file_route("/files", file_routes.list_files, ["GET"]),
        file_route("/files", file_routes.upload_file, ["PUT"]),
        file_route("/files", file_routes.delete_file, ["DELETE"]),
        file_route("/files/content", file_routes.download_file, ["GET"]),
    ]
    later = [("/ide/{rest:path}", "ide", "IDE issue")]
    routes += [instance_route(p, not_yet(f, i), ["GET", "POST", "PUT", "DELETE"]) for p, f, i in later]
    return routes


# -- node routes ---------------------------------------------------------------------------
def _node_auth(request: Request) -> Registry:
    config = _config(request)
    assert config.node_token_hash is not None
    check_bearer(request.headers.get("authorization"), config.node_token_hash)
    return config.registry


async def node_health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def list_instances(request: Request) -> Response:
    registry = _node_auth(request)
    return JSONResponse({
        "instances": [{"id": i, "template": s.files.template.name, "phase": s.phase,
                       "ports": s.files.config.ports} for i, s in registry.instances.items()],
        "broken": registry.broken,
    })


async def create_instance(request: Request) -> Response:
    registry = _node_auth(request)
    body = await read_json_body(request)
    try:
        instance_id = str(body["id"])
        template = str(body["template"])
        token_hash = normalize_hash(str(body["tokenHash"]))
    except KeyError as exc:
        raise Unprocessable("missing_field", {"field": exc.args[0]}) from exc
    except ValueError as exc:
        raise Unprocessable("invalid_token_hash", {"reason": str(exc)}) from exc
    variables, ports = body.get("variables") or {}, body.get("ports") or {}
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise Unprocessable("invalid_variables", {"reason": "variables must map names to strings"})
    if not isinstance(ports, dict):
        raise Unprocessable("invalid_ports", {"reason": "ports must map names to numbers"})
    sup = await registry.create(instance_id, template, token_hash, variables, ports)
    return JSONResponse({"instance": {"id": instance_id, "template": sup.files.template.name,
                                      "ports": sup.files.config.ports, "baseUrl": f"/i/{instance_id}"}},
                        status_code=201)


async def delete_instance(request: Request) -> Response:
    registry = _node_auth(request)
    await registry.delete(request.path_params["instance_id"])
    return Response(status_code=204)


# -- errors ------------------------------------------------------------------------------------
async def _gameplane_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GameplaneError)
    return JSONResponse(exc.envelope(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": code, "details": {"path": request.url.path}},
                        status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse({"error": "internal_error", "details": None}, status_code=500)


def create_app(config: AgentConfig) -> Starlette:
    if config.node_token_hash is not None:
        routes: list[BaseRoute] = [
            Route("/health", node_health, methods=["GET"]),
            Route("/instances", list_instances, methods=["GET"]),
            Route("/instances", create_instance, methods=["POST"]),
            Route("/instances/{instance_id}", delete_instance, methods=["DELETE"]),
            Mount("/i/{instance_id}", routes=instance_routes()),
        ]
    else:
        routes = instance_routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await config.start()
        yield
        await config.registry.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        GameplaneError: _gameplane_error, HTTPException: _http_error, Exception: _unexpected,
    })
    app.state.config = config
    return app
