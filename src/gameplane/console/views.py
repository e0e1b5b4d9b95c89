"""Console routes (DESIGN.md section 5): the ticket, and the websocket.

``GET /api/game/servers/:id/console?ticket=T[&since=N][&batch=1]`` checks, in
this order: the ``Origin`` header, when present, must be the public URL's
origin (scheme, host, port) — anything else is cross-site websocket hijacking
and is refused before the handshake with HTTP 403 ``forbidden_origin``. A
request without ``Origin`` does not come from a browser page (browsers always
send it on websockets) and cannot be a cross-site one, so it passes: scripts
and ``websocat`` need only the ticket. Then the socket is accepted, and every
other refusal is an ``error`` frame and a close with 4000 + the status, since
a browser cannot read the HTTP status of a failed handshake: 4400
``invalid_since``, 4401 ``ticket_required`` / ``invalid_ticket`` /
``ticket_expired`` / ``ticket_used`` / ``session_ended``, 4404, 4409. The
query is checked before the ticket is used, so a typo does not burn it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse

from gameplane.auth.principal import Principal, current_principal
from gameplane.console.proxy import ConsoleProxy, close_with
from gameplane.console.service import ConsoleService
from gameplane.errors import BadRequest, GameplaneError, Unauthorized

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


@router.post("/api/game/servers/{server_id}/console/ticket")
async def console_ticket(server_id: str, request: Request, caller: Caller) -> dict[str, Any]:
    svc: ConsoleService = request.app.state.console
    return await svc.issue_ticket(caller, server_id)


def _since(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or len(text) > 18:
        raise BadRequest("invalid_since", {"reason": "since must be a non-negative integer"})
    return int(text)


@router.websocket("/api/game/servers/{server_id}/console")
async def console_socket(websocket: WebSocket, server_id: str) -> None:
    svc: ConsoleService = websocket.app.state.console
    origin = websocket.headers.get("origin")
    if origin is not None and origin.lower() != svc.origin:
        await websocket.send_denial_response(JSONResponse(
            {"error": "forbidden_origin", "details": {"origin": origin, "expected": svc.origin}},
            status_code=403))
        return
    await websocket.accept()
    query = websocket.query_params
    try:
        since = _since(query.get("since"))
        ticket = query.get("ticket")
        if not ticket:
            raise Unauthorized("ticket_required",
                               {"reason": "POST .../console/ticket, then ?ticket=<ticket>"})
        grant = await svc.redeem(server_id, ticket)
        endpoint = await svc.authorize(grant)
    except GameplaneError as exc:
        await close_with(websocket, exc)
        return
    await ConsoleProxy(websocket, svc, grant, endpoint, since, query.get("batch") in ("1", "true")).run()
