"""Account and access routes (DESIGN.md section 5, plus logout-all, password
change, API keys and the admin audit log): thin — parse, take the caller and
its address, call one service method."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gameplane.auth import audit
from gameplane.auth.principal import Principal, current_principal
from gameplane.auth.service import AuthService
from gameplane.db.models import ApiKey, User
from gameplane.instances.service import iso

router = APIRouter()
Caller = Annotated[Principal, Depends(current_principal)]


def service(request: Request) -> AuthService:
    svc: AuthService = request.app.state.auth
    return svc


def client_address(request: Request) -> str:
    """The peer's address; behind a proxy listed in ``trusted_proxies``, the
    nearest untrusted address of ``X-Forwarded-For`` (clients can prepend
    anything to that header, so only the hops our proxies appended count)."""
    peer = request.client.host if request.client else "unknown"
    trusted = set(request.app.state.auth.settings.trusted_proxies)
    if peer not in trusted:
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                break
    return peer


Service = Annotated[AuthService, Depends(service)]
Address = Annotated[str, Depends(client_address)]


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Credentials(Body):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class RefreshBody(Body):
    refresh_token: str = Field(max_length=256)


class ForgotBody(Body):
    email: str = Field(max_length=254)


class ResetBody(Body):
    token: str = Field(max_length=256)
    password: str = Field(max_length=1024)


class ChangePasswordBody(Body):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class ApiKeyBody(Body):
    name: str


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "role": user.role, "createdAt": iso(user.created_at)}


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "prefix": key.prefix, "createdAt": iso(key.created_at)}


@router.post("/api/auth/register", status_code=201)
async def register(body: Credentials, svc: Service, address: Address) -> dict[str, Any]:
    return {"user": user_json(await svc.register(body.email, body.password, address))}


@router.post("/api/auth/login")
async def login(body: Credentials, svc: Service, address: Address) -> dict[str, Any]:
    return await svc.login(body.email, body.password, address)


@router.post("/api/auth/refresh")
async def refresh(body: RefreshBody, svc: Service, address: Address) -> dict[str, Any]:
    return await svc.refresh(body.refresh_token, address)


@router.post("/api/auth/logout", status_code=204)
async def logout(body: RefreshBody, svc: Service, address: Address) -> Response:
    await svc.logout(body.refresh_token, address)
    return Response(status_code=204)


@router.post("/api/auth/logout-all", status_code=204)
async def logout_all(caller: Caller, svc: Service, address: Address) -> Response:
    await svc.logout_all(caller, address)
    return Response(status_code=204)


@router.post("/api/auth/password/change", status_code=204)
async def change_password(body: ChangePasswordBody, caller: Caller, svc: Service,
                          address: Address) -> Response:
    await svc.change_password(caller, body.current_password, body.new_password, address)
    return Response(status_code=204)


# One constant body: the answer must not tell whether the account exists.
FORGOT_ANSWER = {"accepted": True, "detail": "if the account exists, a reset link is on its way"}


@router.post("/api/auth/password/forgot", status_code=202)
async def forgot_password(body: ForgotBody, svc: Service, address: Address) -> dict[str, Any]:
    await svc.forgot(body.email, address)
    return FORGOT_ANSWER


@router.post("/api/auth/password/reset", status_code=204)
async def reset_password(body: ResetBody, svc: Service, address: Address) -> Response:
    await svc.reset(body.token, body.password, address)
    return Response(status_code=204)


@router.get("/api/me")
async def me(caller: Caller, svc: Service) -> dict[str, Any]:
    return {"user": user_json(await svc.me(caller)), "via": caller.via}


@router.get("/api/auth/api-keys")
async def list_api_keys(caller: Caller, svc: Service) -> dict[str, Any]:
    return {"apiKeys": [api_key_json(k) for k in await svc.list_api_keys(caller)]}


@router.post("/api/auth/api-keys", status_code=201)
async def create_api_key(body: ApiKeyBody, caller: Caller, svc: Service, address: Address) -> dict[str, Any]:
    row, key = await svc.create_api_key(caller, body.name, address)
    # The key itself is in this answer only: the database keeps its hash.
    return {"apiKey": api_key_json(row), "key": key}


@router.delete("/api/auth/api-keys/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, caller: Caller, svc: Service, address: Address) -> Response:
    await svc.revoke_api_key(caller, key_id, address)
    return Response(status_code=204)


@router.get("/api/admin/audit")
async def audit_log(caller: Caller, svc: Service, before: int | None = None, limit: int = 100,
                    user_id: Annotated[str | None, Query(alias="userId")] = None,
                    kind: str | None = None) -> dict[str, Any]:
    events = await svc.audit_page(caller, before=before, limit=limit, user_id=user_id, kind=kind)
    return {"events": [audit.to_json(e) for e in events]}
