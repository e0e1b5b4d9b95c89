"""Instances: create (provision), read, power, console, delete — one service
function per route, each doing its work in one transaction and recording its
event after commit.

Provisioning (DESIGN.md section 5)::

    POST → row in lifecycle "provisioning" (202) → ports placed → agent
    instance created and installed → semantically ready (``/ready``) →
    lifecycle "active" + event

On error or after the template's timeout the agent instance is destroyed and
the row marked ``failed`` with the reason. A provisioning interrupted by an
API crash is finished the same way at the next start (``recover``), and
agent instances the database does not know are removed, so a crash leaks no
agent and leaves no phantom server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gameplane.agent.auth import hash_token
from gameplane.agents.client import AgentClient, AgentEndpoint, assert_agent_ready
from gameplane.agents.poller import Poller
from gameplane.agents.state import NormalizedState, derive_state
from gameplane.auth.principal import Principal
from gameplane.db.engine import transaction
from gameplane.db.models import Instance, InstanceKind, new_instance_id
from gameplane.errors import Conflict, GameplaneError, NotFound, Unprocessable
from gameplane.events.service import EventLog
from gameplane.providers.base import Provider, ProvisionSpec
from gameplane.templates import resolve_variables
from gameplane.templates.model import Template

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
ACTIONS = ("start", "stop", "restart")


def _now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


class InstanceService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], provider: Provider,
                 client: AgentClient, events: EventLog, templates: dict[str, Template],
                 provision_timeout: float, poller: Poller | None = None):
        self.sessions = sessions
        self.provider = provider
        self.client = client
        self.events = events
        self.templates = templates
        self.provision_timeout = provision_timeout
        # The heartbeat's cache of normalized states; refreshed at once on our own changes.
        self.poller = poller
        self._provisioning: dict[str, asyncio.Task[None]] = {}
        # Placement reads then writes; one process places one instance at a time.
        self._placement_lock = asyncio.Lock()
        self._reconciler: asyncio.Task[None] | None = None

    # -- views ----------------------------------------------------------------------
    def state(self, row: Instance) -> NormalizedState:
        """An active instance shows what its agent says (the heartbeat's cache,
        else the last persisted state); any other lifecycle is the row's own."""
        if row.lifecycle != "active":
            return derive_state(row.lifecycle, None, None, now=row.updated_at,
                                lifecycle_reason=row.failure_reason)
        cached = self.poller.state(row.id) if self.poller is not None else None
        if cached is not None:
            return cached
        if row.state:
            return row.state  # type: ignore[return-value]
        return derive_state("active", None, None, now=row.updated_at)

    async def refresh(self, row: Instance) -> None:
        """Poll one instance now, so a change we caused shows without waiting a cycle."""
        if self.poller is None:
            return
        endpoint = (AgentEndpoint(row.agent_url, row.agent_token)
                    if row.agent_url and row.lifecycle == "active" else None)
        await self.poller.poll_now(row.id, endpoint, row.lifecycle)

    def to_json(self, row: Instance) -> dict[str, Any]:
        state = self.state(row)
        return {"id": row.id, "name": row.name, "kind": row.kind, "template": row.template,
                "createdAt": iso(row.created_at), "ports": row.ports, "state": state}

    async def list_for(self, principal: Principal, kind: InstanceKind) -> list[Instance]:
        query = select(Instance).where(Instance.kind == kind).order_by(Instance.created_at)
        if not principal.is_admin:
            query = query.where(Instance.owner_id == principal.user_id)
        async with self.sessions() as session:
            return list((await session.execute(query)).scalars())

    async def get(self, principal: Principal, instance_id: str, kind: InstanceKind) -> Instance:
        async with self.sessions() as session:
            return await self._owned(session, principal, instance_id, kind)

    @staticmethod
    async def _owned(session: AsyncSession, principal: Principal, instance_id: str,
                     kind: InstanceKind) -> Instance:
        row = await session.get(Instance, instance_id)
        # Another user's instance is "not found", never "forbidden": ids must not leak.
        if row is None or row.kind != kind or not principal.may_access(row.owner_id):
            raise NotFound("not_found", {"id": instance_id})
        return row

    # -- create ------------------------------------------------------------------------
    def _template(self, name: Any, kind: InstanceKind) -> Template:
        template = self.templates.get(name) if isinstance(name, str) else None
        if template is None or template.template.kind != kind:
            raise Unprocessable("unknown_template", {"template": name,
                                                     "available": sorted(
                                                         n for n, t in self.templates.items()
                                                         if t.template.kind == kind)})
        return template

    async def create(self, principal: Principal, kind: InstanceKind, name: Any, template_name: Any,
                     variables: Any) -> Instance:
        if not isinstance(name, str) or not _NAME.match(name):
            raise Unprocessable("invalid_name", {
                "name": name, "expected": "1-64 letters, digits, spaces, '_', '.', '-'; "
                                          "starting with a letter or digit"})
        template = self._template(template_name, kind)
        if variables is None:
            variables = {}
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            raise Unprocessable("invalid_variables", {"reason": "variables map names to strings"})
        resolve_variables(template, variables)
        async with self._placement_lock, transaction(self.sessions) as session:
            # Failed instances keep their name until deleted, so the user sees why they failed.
            clash = await session.execute(select(Instance.id).where(
                Instance.owner_id == principal.user_id, Instance.kind == kind, Instance.name == name))
            if clash.first() is not None:
                raise Conflict("name_taken", {"name": name})
            # Placed before answering: a host without room refuses now, with the reason.
            taken, committed = await self._placements(session)
            ports = self.provider.place(template, taken, committed)
            row = Instance(id=new_instance_id(), owner_id=principal.user_id, kind=kind, name=name,
                           template=template.name, variables=variables, ports=ports,
                           provider=self.provider.name, agent_token=secrets.token_urlsafe(32),
                           lifecycle="provisioning",
                           provision_deadline=_now() + timedelta(seconds=self.provision_timeout))
            session.add(row)
        await self.events.record("provisioning", row.id, row.owner_id, {"template": template.name})
        self._provisioning[row.id] = asyncio.create_task(self._provision(row.id))
        return row

    async def _provision(self, instance_id: str) -> None:
        try:
            await asyncio.wait_for(self._provision_steps(instance_id), self.provision_timeout)
        except asyncio.CancelledError:
            await self._abandon(instance_id, "cancelled")
            raise
        except TimeoutError:
            await self._fail(instance_id, f"not ready within {self.provision_timeout:g}s")
        except GameplaneError as exc:
            await self._fail(instance_id, f"{exc.code}: {exc.details}")
        except Exception as exc:  # the reason goes to the user; the trace to the log
            log.exception("provisioning %s failed", instance_id)
            await self._fail(instance_id, f"internal error: {exc.__class__.__name__}")
        finally:
            self._provisioning.pop(instance_id, None)

    async def _provision_steps(self, instance_id: str) -> None:
        async with self.sessions() as session:
            row = await session.get(Instance, instance_id)
            assert row is not None
            spec = ProvisionSpec(row.id, row.template, hash_token(row.agent_token),
                                 dict(row.variables), dict(row.ports))
            token = row.agent_token
        placement = await self.provider.create(spec)
        endpoint = AgentEndpoint(placement.agent_url, token)
        async with transaction(self.sessions) as session:
            stored = await session.get(Instance, instance_id)
            assert stored is not None
            stored.agent_url, stored.node = placement.agent_url, placement.node
        # Semantic readiness decides; the provider's word that it created the instance does not.
        while True:
            try:
                await assert_agent_ready(self.client, endpoint)
                break
            except GameplaneError:
                await asyncio.sleep(0.2)
        async with transaction(self.sessions) as session:
            stored = await session.get(Instance, instance_id)
            assert stored is not None
            stored.lifecycle = "active"
            stored.provision_deadline = None
            owner = stored.owner_id
        await self.events.record("active", instance_id, owner, {})
        await self.refresh(stored)

    async def _placements(self, session: AsyncSession) -> tuple[list[int], int]:
        """Ports held and memory promised by every instance that has a place."""
        rows = (await session.execute(select(Instance.template, Instance.ports).where(
            Instance.lifecycle.in_(("provisioning", "active", "suspended", "deleting"))))).all()
        taken = [p for _, ports in rows for p in (ports or {}).values()]
        committed = sum(self.templates[t].limits.memory or 0 for t, _ in rows if t in self.templates)
        return taken, committed

    async def _fail(self, instance_id: str, reason: str) -> None:
        """Mark failed first (the user learns at once), then remove what the
        host has; if the host cannot be reached, the reconciler removes it later."""
        log.warning("provisioning %s failed: %s", instance_id, reason)
        await self._mark_failed(instance_id, reason)
        with contextlib.suppress(GameplaneError):
            await self.provider.destroy(instance_id)

    async def _mark_failed(self, instance_id: str, reason: str) -> None:
        async with transaction(self.sessions) as session:
            row = await session.get(Instance, instance_id)
            if row is None:
                return
            row.lifecycle, row.failure_reason, row.provision_deadline = "failed", reason, None
            owner = row.owner_id
        await self.events.record("failed", instance_id, owner, {"reason": reason})
        await self.refresh(row)

    async def _abandon(self, instance_id: str, why: str) -> None:
        """Provisioning was cancelled (delete, or API shutdown): remove what was made."""
        with contextlib.suppress(GameplaneError):
            await self.provider.destroy(instance_id)
        log.info("provisioning %s %s", instance_id, why)

    # -- power and console ------------------------------------------------------------------
    async def active_endpoint(self, principal: Principal, instance_id: str,
                      kind: InstanceKind) -> tuple[Instance, AgentEndpoint]:
        row = await self.get(principal, instance_id, kind)
        if row.lifecycle != "active" or row.agent_url is None:
            raise Conflict(f"instance_{row.lifecycle}", {"lifecycle": row.lifecycle,
                                                         "reason": row.failure_reason})
        return row, AgentEndpoint(row.agent_url, row.agent_token)

    async def power(self, principal: Principal, instance_id: str, kind: InstanceKind,
                    action: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise NotFound("not_found", {"action": action})
        row, endpoint = await self.active_endpoint(principal, instance_id, kind)
        result: dict[str, Any] = await getattr(self.client, action)(endpoint)
        await self.refresh(row)
        return result

    async def console_command(self, principal: Principal, instance_id: str, kind: InstanceKind,
                              command: Any) -> dict[str, Any]:
        if not isinstance(command, str):
            raise Unprocessable("invalid_command", {"reason": "command must be a string"})
        _, endpoint = await self.active_endpoint(principal, instance_id, kind)
        return await self.client.console_command(endpoint, command)

    # -- delete --------------------------------------------------------------------------------
    async def delete(self, principal: Principal, instance_id: str, kind: InstanceKind) -> None:
        row = await self.get(principal, instance_id, kind)
        task = self._provisioning.get(instance_id)
        if task is not None:
            # Deleting during provisioning cancels it; the task removes what it made.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with transaction(self.sessions) as session:
            stored = await session.get(Instance, instance_id)
            if stored is not None:
                stored.lifecycle = "deleting"
        await self.provider.destroy(instance_id)
        async with transaction(self.sessions) as session:
            stored = await session.get(Instance, instance_id)
            if stored is not None:
                await session.delete(stored)
        await self.events.record("deleted", instance_id, row.owner_id, {})

    # -- recovery ---------------------------------------------------------------------------------
    async def recover(self) -> None:
        """After an API restart: fail provisionings the crash interrupted, then
        reconcile with the hosts."""
        async with self.sessions() as session:
            interrupted = list((await session.execute(
                select(Instance.id).where(Instance.lifecycle == "provisioning"))).scalars())
        for instance_id in interrupted:
            await self._fail(instance_id, "interrupted: the API restarted during provisioning")
        await self.reconcile()

    async def reconcile(self) -> None:
        """Finish interrupted deletions and remove agent instances the database
        does not own (e.g. a failed provisioning whose host was unreachable)."""
        async with self.sessions() as session:
            rows = (await session.execute(select(Instance.id, Instance.lifecycle))).all()
        owned = {iid for iid, lifecycle in rows if lifecycle in ("provisioning", "active", "suspended")}
        owned |= set(self._provisioning)
        for instance_id, lifecycle in rows:
            if lifecycle == "deleting":
                with contextlib.suppress(GameplaneError):
                    await self.provider.destroy(instance_id)
                    async with transaction(self.sessions) as session:
                        stored = await session.get(Instance, instance_id)
                        if stored is not None:
                            await session.delete(stored)
        for orphan in await self.provider.instance_ids() - owned:
            if orphan in self._provisioning:
                continue  # created meanwhile
            log.warning("removing agent instance %s: the database does not own it", orphan)
            with contextlib.suppress(GameplaneError):
                await self.provider.destroy(orphan)

    def start_reconciling(self, every: float) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.reconcile()
                except GameplaneError as exc:  # a host is unreachable: try again next time
                    log.warning("reconcile: %s %s", exc.code, exc.details)
                except Exception:
                    log.exception("reconcile failed")

        self._reconciler = asyncio.create_task(loop())

    async def shutdown(self) -> None:
        """Stop background work; safe to call twice."""
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
            self._reconciler = None
        for task in list(self._provisioning.values()):
            task.cancel()
        await asyncio.gather(*self._provisioning.values(), return_exceptions=True)

