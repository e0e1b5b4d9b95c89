"""Models on both backends: aware datetimes, JSON, ids, constraints."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from gameplane.agent.instance import check_instance_id
from gameplane.db.models import Event, Instance, User, new_instance_id


async def _user(session: AsyncSession, email: str = "owner@example.com") -> User:
    user = User(email=email, password_hash="x", role="user")
    session.add(user)
    await session.flush()
    return user


def _instance(owner: User | None, name: str = "survival", **kw: Any) -> Instance:
    fields: dict[str, Any] = {"kind": "game", "template": "freeciv", "agent_token": "t" * 32, **kw}
    return Instance(owner_id=owner.id if owner else None, name=name, **fields)


async def _reload(session: AsyncSession, instance: Instance) -> Instance:
    """Read the row again from the database, not from the identity map."""
    await session.commit()
    session.expunge_all()
    fresh = await session.get(Instance, instance.id)
    assert fresh is not None
    return fresh


async def test_datetimes_round_trip_aware_and_in_utc(db_session: AsyncSession, backend: str) -> None:
    deadline = datetime(2026, 11, 25, 20, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    inst = _instance(await _user(db_session), provision_deadline=deadline)
    db_session.add(inst)
    fresh = await _reload(db_session, inst)
    assert fresh.provision_deadline == deadline, "the same instant"
    assert fresh.provision_deadline is not None and fresh.provision_deadline.tzinfo is UTC
    assert fresh.provision_deadline.hour == 18
    assert fresh.created_at.tzinfo is UTC and fresh.updated_at.tzinfo is UTC
    assert abs(fresh.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    if backend == "sqlite":
        raw = (await db_session.execute(text("SELECT provision_deadline FROM instances"))).scalar_one()
        assert raw == "2026-11-25 18:00:00.123456", "stored as the UTC wall time"


async def test_server_default_timestamps_read_back_aware(db_session: AsyncSession) -> None:
    await db_session.execute(insert(Event).values(kind="raw", data={}))
    created = (await db_session.execute(select(Event.created_at).where(Event.kind == "raw"))).scalar_one()
    assert created.tzinfo is UTC
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)


async def test_naive_datetimes_are_refused(db_session: AsyncSession) -> None:
    db_session.add(_instance(await _user(db_session), provision_deadline=datetime(2026, 1, 1)))
    with pytest.raises(StatementError, match="naive datetime"):
        await db_session.flush()


async def test_updated_at_moves_on_update(db_session: AsyncSession) -> None:
    inst = _instance(await _user(db_session), updated_at=datetime(2020, 1, 1, tzinfo=UTC))
    db_session.add(inst)
    await db_session.flush()
    inst.lifecycle = "active"
    await db_session.flush()
    assert inst.updated_at > datetime(2025, 1, 1, tzinfo=UTC)


async def test_json_columns_round_trip(db_session: AsyncSession) -> None:
    variables = {"motd": "héllo «world» 🎮", "nested": {"list": [1, 2.5, True, None, "x"]}, "empty": {}}
    state = {"phase": "running", "ready": True, "players": {"online": 3, "max": 16}, "reason": None}
    inst = _instance(await _user(db_session), variables=variables, ports={"game": 20001, "rcon": 20002},
                     state=state)
    db_session.add(inst)
    fresh = await _reload(db_session, inst)
    assert fresh.variables == variables
    assert fresh.ports == {"game": 20001, "rcon": 20002}
    assert fresh.state == state


async def test_json_defaults_and_null_state(db_session: AsyncSession) -> None:
    """variables/ports default to {}, and a state of None is SQL NULL (not JSON null)."""
    inst = _instance(await _user(db_session))
    db_session.add(inst)
    fresh = await _reload(db_session, inst)
    assert fresh.variables == {} and fresh.ports == {} and fresh.state is None
    null_state = select(func.count()).select_from(Instance).where(Instance.state.is_(None))
    nulls = await db_session.scalar(null_state)
    assert nulls == 1


def test_instance_ids_are_short_lowercase_agent_ids() -> None:
    ids = {new_instance_id() for _ in range(2000)}
    assert len(ids) == 2000
    for instance_id in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]{11}", instance_id)
        assert check_instance_id(instance_id) == instance_id


async def test_instances_get_an_id_and_lifecycle_by_default(db_session: AsyncSession) -> None:
    inst = _instance(None)
    db_session.add(inst)
    await db_session.flush()
    assert len(inst.id) <= 20 and inst.id.isalnum() and inst.id.islower()
    assert inst.lifecycle == "provisioning" and inst.provider == "local"


async def test_instance_names_are_unique_per_owner_and_kind(db_session: AsyncSession) -> None:
    alice, bob = await _user(db_session, "alice@example.com"), await _user(db_session, "bob@example.com")
    db_session.add_all([_instance(alice), _instance(alice, kind="dev"), _instance(bob)])
    await db_session.commit()
    db_session.add(_instance(alice))
    with pytest.raises(IntegrityError):
        await db_session.flush()
    await db_session.rollback()


async def test_foreign_keys_are_enforced(db_session: AsyncSession) -> None:
    db_session.add(Instance(owner_id="no-such-user", kind="game", name="x", template="freeciv",
                            agent_token="t"))
    with pytest.raises(IntegrityError):
        await db_session.flush()
    await db_session.rollback()


@pytest.mark.parametrize(("field", "value"), [("lifecycle", "exploded"), ("kind", "vm")])
async def test_check_constraints_refuse_unknown_values(db_session: AsyncSession, field: str,
                                                       value: str) -> None:
    db_session.add(_instance(None, **{field: value}))
    with pytest.raises(IntegrityError):
        await db_session.flush()
    await db_session.rollback()


async def test_events_number_upwards_and_outlive_their_instance(db_session: AsyncSession) -> None:
    inst = _instance(None)
    db_session.add(inst)
    await db_session.flush()
    events = [Event(instance_id=inst.id, kind="state", data={"phase": p}) for p in ("starting", "running")]
    db_session.add_all(events)
    await db_session.flush()
    assert events[0].id < events[1].id
    await db_session.delete(inst)
    await db_session.commit()
    kept = (await db_session.execute(select(Event).where(Event.instance_id == inst.id).order_by(Event.id))
            ).scalars().all()
    assert [e.data["phase"] for e in kept] == ["starting", "running"]


async def test_tests_do_not_see_each_others_rows(db_session: AsyncSession) -> None:
    """Every test above committed rows; the per-test rollback left none behind."""
    for model in (User, Instance, Event):
        assert await db_session.scalar(select(func.count()).select_from(model)) == 0
