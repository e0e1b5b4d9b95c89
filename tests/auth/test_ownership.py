"""Ownership: another user's object answers 404 (never 403) on every route that
names one, admins act on all, and API keys reach only their owner's objects.
On both databases, without game servers (a stand-in provider)."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute, compile_path

from gameplane.db.engine import transaction
from gameplane.db.models import Instance, InstanceKind
from tests.auth.conftest import Api, bearer

#: which of user A's objects a path parameter names: by name, or for a bare ``id`` by
#: the path it appears in. A new kind of object id must be added here: the matrix
#: fails naming the route until it is.
OBJECT_PARAMS = {"server_id": "server", "environment_id": "dev", "env_id": "dev", "dev_id": "dev",
                 "key_id": "api_key", "backup_id": "backup"}
#: websocket routes naming an object cannot be called like HTTP routes: each is listed
#: with the test that shows another user cannot reach it
WEBSOCKET_ROUTES = {
    # Only a ticket opens it, and a ticket is issued to the server's owner (the ticket
    # route is in the matrix) and bound to that server and user.
    "/api/game/servers/{server_id}/console":
        "tests/api/test_console_proxy.py::test_tickets_are_bound_single_use_and_expire",
}
BARE_ID_PREFIXES = {"/api/game/servers/": "server", "/api/dev/": "dev", "/api/auth/api-keys/": "api_key"}


def _is_object_id(name: str) -> bool:
    return name == "id" or name.endswith("_id")


def _object_for(path: str, param: str) -> str:
    kind = OBJECT_PARAMS.get(param)
    if kind is None and param == "id":
        kind = next((k for prefix, k in BARE_ID_PREFIXES.items() if path.startswith(prefix)), None)
    assert kind is not None, f"{path}: no object of user A for {{{param}}}: add it to OBJECT_PARAMS"
    return kind


def _example(schema: dict[str, Any]) -> Any:
    """A minimal value valid for a JSON schema property (enough to get past validation)."""
    kind = schema.get("type")
    return {"string": "x", "integer": 1, "number": 1, "boolean": True, "array": [],
            "object": {}}.get(str(kind), "x")


def _body(route: APIRoute) -> dict[str, Any] | None:
    if route.body_field is None:
        return None
    annotation = route.body_field.field_info.annotation
    # An optional body (``Model | None``): its model.
    model = next((a for a in typing.get_args(annotation) if hasattr(a, "model_json_schema")), annotation)
    schema = model.model_json_schema(by_alias=True)  # type: ignore[union-attr]
    return {name: _example(prop) for name, prop in schema.get("properties", {}).items()
            if name in schema.get("required", [])}


def _flat_routes(app: FastAPI) -> Iterator[tuple[str, BaseRoute]]:
    """(full path, route) of every route, included routers expanded (FastAPI 0.16x
    includes them lazily: ``app.routes`` holds one entry per router)."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield getattr(route, "path", ""), route
            continue
        for context in contexts():
            # A websocket route's context has an empty path_format: take the route's own.
            yield context.path_format or getattr(context.original_route, "path", ""), context.original_route


def object_routes(app: FastAPI) -> list[tuple[str, str, list[str], APIRoute]]:
    """(method, path, object-id params, route) for every HTTP route naming an object."""
    found = []
    flat = list(_flat_routes(app))
    assert any(path == "/api/game/servers" for path, _ in flat), "the route table was read"
    for path, route in flat:
        params = list(compile_path(path)[2])
        ids = [p for p in params if _is_object_id(p)]
        if not ids:
            continue
        if isinstance(route, APIWebSocketRoute):
            assert path in WEBSOCKET_ROUTES, \
                f"websocket {path} names an object: add it to WEBSOCKET_ROUTES with the test covering it"
            continue
        assert isinstance(route, APIRoute), route
        found += [(method, path, ids, route) for method in sorted(route.methods)]
    return found


async def _instance(api: Api, owner: str, kind: InstanceKind, name: str | None = None) -> str:
    async with transaction(api.sessions) as db:
        row = Instance(owner_id=owner, kind=kind, name=name or f"{kind} of a", template="freeciv",
                       agent_token="t", lifecycle="active", agent_url="http://127.0.0.1:9")
        db.add(row)
        await db.flush()
        return row.id


async def _world(api: Api) -> dict[str, Any]:
    a = await api.user("a@example.com")
    b = await api.user("b@example.com")
    owner = a["user"]["id"]
    r = await api.client.post("/api/auth/api-keys", json={"name": "ci"}, headers=a["headers"])
    assert r.status_code == 201
    objects = {"server": await _instance(api, owner, "game"), "dev": await _instance(api, owner, "dev"),
               "api_key": r.json()["apiKey"]["id"],
               # Backups live on the agent: the server in the path is what must not leak.
               "backup": "backup-of-a"}
    return {"a": a, "b": b, "objects": objects, "a_key": r.json()["key"]}


async def test_user_b_gets_404_on_every_route_of_user_a_objects(api: Api) -> None:
    """The matrix is generated from the app's route table: every HTTP route with a
    path parameter named ``id`` or ``*_id`` (servers today; dev environments,
    backups and the rest as their routes appear) is called as user B with user A's
    object id, a minimal valid body and the required query parameters, and must
    answer 404 ``not_found``. Afterwards A still sees its objects unchanged."""
    world = await _world(api)
    matrix = object_routes(api.app)
    covered = {(m, p) for m, p, _, _ in matrix}
    assert {("GET", "/api/game/servers/{server_id}"), ("DELETE", "/api/game/servers/{server_id}"),
            ("POST", "/api/game/servers/{server_id}/start"),
            ("POST", "/api/game/servers/{server_id}/console/command"),
            ("POST", "/api/game/servers/{server_id}/console/ticket"),
            ("DELETE", "/api/auth/api-keys/{key_id}")} <= covered
    for method, path, ids, route in matrix:
        url = path
        for param in ids:
            url = url.replace(f"{{{param}}}", world["objects"][_object_for(path, param)])
        query = {p.alias: "x" for p in route.dependant.query_params if p.field_info.is_required()}
        r = await api.client.request(method, url, params=query, json=_body(route),
                                     headers=world["b"]["headers"])
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path, r.text)
    a = world["a"]["headers"]
    r = await api.client.get(f"/api/game/servers/{world['objects']['server']}", headers=a)
    assert r.status_code == 200
    keys = (await api.client.get("/api/auth/api-keys", headers=a)).json()["apiKeys"]
    assert [k["id"] for k in keys] == [world["objects"]["api_key"]]


async def test_lists_show_only_the_callers_objects(api: Api) -> None:
    world = await _world(api)
    r = await api.client.get("/api/game/servers", headers=world["b"]["headers"])
    assert r.json() == {"servers": []}
    mine = (await api.client.get("/api/game/servers", headers=world["a"]["headers"])).json()["servers"]
    assert [s["id"] for s in mine] == [world["objects"]["server"]]


async def test_an_admin_acts_on_every_users_objects(api: Api) -> None:
    world = await _world(api)
    admin = await api.admin()
    r = await api.client.get(f"/api/game/servers/{world['objects']['server']}", headers=admin["headers"])
    assert r.status_code == 200
    r = await api.client.get("/api/game/servers", headers=admin["headers"])
    assert world["objects"]["server"] in [s["id"] for s in r.json()["servers"]]


async def test_an_api_key_reaches_only_its_owners_objects(api: Api) -> None:
    """Even an admin's key acts as a plain user: its owner's objects only."""
    world = await _world(api)
    server = world["objects"]["server"]
    r = await api.client.get(f"/api/game/servers/{server}", headers=bearer(world["a_key"]))
    assert r.status_code == 200
    admin = await api.admin()
    key = (await api.client.post("/api/auth/api-keys", json={"name": "ops"},
                                 headers=admin["headers"])).json()["key"]
    r = await api.client.get(f"/api/game/servers/{server}", headers=bearer(key))
    assert r.status_code == 404
