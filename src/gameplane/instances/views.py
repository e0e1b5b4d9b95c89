"""Game server routes (DESIGN.md section 5): thin — parse, take the caller,
call one service function, shape the answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gameplane.auth.principal import Principal, current_principal
from gameplane.instances.service import ACTIONS, InstanceService

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


def service(request: Request) -> InstanceService:
    svc: InstanceService = request.app.state.instances
    return svc


Service = Annotated[InstanceService, Depends(service)]


class CreateServer(BaseModel):
    name: str = Field(description="1-64 letters, digits, spaces, '_', '.', '-'")
    template: str = Field(description="a template name from GET /api/templates")
    variables: dict[str, str] = Field(default_factory=dict)


class ConsoleCommand(BaseModel):
    command: str


@router.get("/api/game/servers")
async def list_servers(caller: Caller, svc: Service) -> dict[str, Any]:
    return {"servers": [svc.to_json(row) for row in await svc.list_for(caller, "game")]}


@router.post("/api/game/servers", status_code=202)
async def create_server(body: CreateServer, caller: Caller, svc: Service) -> dict[str, Any]:
    row = await svc.create(caller, "game", body.name, body.template, body.variables)
    return {"server": svc.to_json(row)}


@router.get("/api/game/servers/{server_id}")
async def get_server(server_id: str, caller: Caller, svc: Service) -> dict[str, Any]:
    return {"server": svc.to_json(await svc.get(caller, server_id, "game"))}


@router.delete("/api/game/servers/{server_id}", status_code=204)
async def delete_server(server_id: str, caller: Caller, svc: Service) -> Response:
    await svc.delete(caller, server_id, "game")
    return Response(status_code=204)


def _power_route(action: str) -> None:
    async def power(server_id: str, caller: Caller, svc: Service) -> JSONResponse:
        result = await svc.power(caller, server_id, "game", action)
        return JSONResponse({"accepted": True, "operation": action, "seq": result.get("seq")},
                            status_code=202)

    power.__name__ = f"{action}_server"
    router.post(f"/api/game/servers/{{server_id}}/{action}", status_code=202)(power)


for _action in ACTIONS:
    _power_route(_action)


@router.post("/api/game/servers/{server_id}/console/command", status_code=202)
async def console_command(server_id: str, body: ConsoleCommand, caller: Caller,
                          svc: Service) -> dict[str, Any]:
    result = await svc.console_command(caller, server_id, "game", body.command)
    return {"accepted": True, "seq": result.get("seq")}


@router.get("/api/templates")
async def templates(caller: Caller, svc: Service) -> dict[str, Any]:
    return {"templates": [
        {"name": t.name, "kind": t.template.kind, "description": t.template.description,
         "variables": {k: {"default": v.default, "description": v.description}
                       for k, v in t.variables.items()},
         "ports": {k: {"protocol": p.protocol} for k, p in t.ports.items()}}
        for t in sorted(svc.templates.values(), key=lambda t: t.name)]}
