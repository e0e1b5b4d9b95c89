"""derive_state and is_event, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gameplane.agents.client import FailureKind
from gameplane.agents.state import NormalizedState, Observation, derive_state, is_event, iso_utc

T0 = datetime(2026, 11, 25, 18, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=10)


def status(phase: str, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "reason": None, "seq": 1, "busy": None,
            "resources": {"cpuPercent": 2.5, "memoryBytes": 1000, "processes": 2, "diskBytes": 4096},
            **extra}


def seen(phase: str = "running", ready: bool = True, at: datetime = T0, **extra: Any) -> Observation:
    return Observation(at, True, ready, status(phase, **extra))


DOWN = Observation(T0, False, False, None, FailureKind.UNREACHABLE, "agent unreachable: connection refused")
HUNG = Observation(T0, False, False, None, FailureKind.TIMEOUT, None)
AUTH = Observation(T0, True, False, None, FailureKind.AUTH, None)
BAD = Observation(T0, True, True, None, FailureKind.BAD_RESPONSE,
                  "bad answer from the agent: /status: HTTP 500")


@pytest.mark.parametrize(("lifecycle", "obs", "phase", "ready", "online", "reachable", "reason"), [
    # the agent's workload phase while active
    ("active", seen("running"), "running", True, True, True, None),
    ("active", seen("starting"), "starting", True, False, True, None),
    ("active", seen("stopped"), "stopped", True, False, True, None),
    ("active", seen("stopping"), "stopping", True, False, True, None),
    ("active", seen("crashed", reason="exited with code 3"),
     "crashed", True, False, True, "exited with code 3"),
    # ready is the semantic readiness only; /ready's reason wins while not ready
    ("active", Observation(T0, True, False, status("stopped"), reason="not installed"),
     "stopped", False, False, True, "not installed"),
    ("active", Observation(T0, True, False, status("running")), "running", False, True, True, None),
    # no answer, or an answer that cannot be used
    ("active", DOWN, "unreachable", False, False, False, "agent unreachable: connection refused"),
    ("active", HUNG, "unreachable", False, False, False, "agent did not answer in time"),
    ("active", AUTH, "unreachable", False, False, True,
     "the agent refused the control plane's credentials (401)"),
    ("active", BAD, "unreachable", False, False, True, "bad answer from the agent: /status: HTTP 500"),
    ("active", seen("exploding"), "unreachable", False, False, True,
     "bad answer from the agent: unknown phase 'exploding'"),
    ("active", None, "unreachable", False, False, False, "not polled yet"),
    # the lifecycle wins over anything the agent says
    ("provisioning", seen("running"), "provisioning", False, False, True, None),
    ("provisioning", DOWN, "provisioning", False, False, False, None),
    ("suspended", seen("running"), "suspended", False, False, True, None),
    ("deleting", seen("running"), "deleting", False, False, True, None),
    ("failed", None, "failed", False, False, False, None),
])
def test_derivation_table(lifecycle: str, obs: Observation | None, phase: str, ready: bool, online: bool,
                          reachable: bool, reason: str | None) -> None:
    state = derive_state(lifecycle, obs, None, now=T0)
    assert (state["phase"], state["ready"], state["online"], state["reachable"], state["reason"]) == (
        phase, ready, online, reachable, reason)
    assert state["since"] == "2026-11-25T18:00:00Z"


def test_the_lifecycle_reason_is_the_reason() -> None:
    state = derive_state("failed", None, None, now=T0, lifecycle_reason="not ready within 60s: not installed")
    assert state["reason"] == "not ready within 60s: not installed"


def test_since_stays_while_the_phase_does_and_moves_when_it_changes() -> None:
    first = derive_state("active", seen("running", at=T0), None)
    again = derive_state("active", seen("running", at=T1), first)
    assert first["since"] == again["since"] == "2026-11-25T18:00:00Z"
    assert again["lastSeenAt"] == "2026-11-25T18:00:10Z"
    stopped = derive_state("active", seen("stopped", at=T1 + timedelta(seconds=5)), again)
    assert stopped["since"] == "2026-11-25T18:00:15Z"


def test_last_seen_survives_an_unreachable_agent_and_is_none_before_any_answer() -> None:
    up = derive_state("active", seen("running", at=T0), None)
    down = derive_state("active", Observation(T1, False, False, None, FailureKind.UNREACHABLE), up)
    assert down["lastSeenAt"] == "2026-11-25T18:00:00Z" and down["since"] == "2026-11-25T18:00:10Z"
    never = derive_state("active", Observation(T1, False, False, None, FailureKind.TIMEOUT), None)
    assert never["lastSeenAt"] is None


def test_resources_and_players() -> None:
    state = derive_state("active", seen("running"), None)
    assert state["resources"] == {"cpuPercent": 2.5, "memoryBytes": 1000, "diskBytes": 4096}
    assert state["players"] == {"online": None, "max": None}
    with_players = derive_state("active", seen("running", players={"online": 3, "max": 16}), None)
    assert with_players["players"] == {"online": 3, "max": 16}
    odd = derive_state("active", seen("running", players={"online": "3", "max": True},
                                      resources={"cpuPercent": "x"}), None)
    assert odd["players"] == {"online": None, "max": None}
    assert odd["resources"] == {"cpuPercent": None, "memoryBytes": None, "diskBytes": None}
    down = derive_state("active", DOWN, state)
    assert down["resources"] == {"cpuPercent": None, "memoryBytes": None, "diskBytes": None}


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="lifecycle"):
        derive_state("sleeping", None, None, now=T0)
    with pytest.raises(ValueError, match="now"):
        derive_state("active", None, None)
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 1, 1))


def test_iso_utc_converts_to_utc_with_z() -> None:
    plus2 = datetime(2026, 11, 25, 20, 0, 4, 999000, tzinfo=timezone(timedelta(hours=2)))
    assert iso_utc(plus2) == "2026-11-25T18:00:04Z"


def _state(**changes: Any) -> NormalizedState:
    base: NormalizedState = {
        "phase": "running", "ready": True, "online": True, "reachable": True,
        "since": "2026-11-25T18:00:00Z", "lastSeenAt": "2026-11-25T18:00:00Z", "reason": None,
        "resources": {"cpuPercent": 1.0, "memoryBytes": 1, "diskBytes": 1},
        "players": {"online": None, "max": None}}
    base.update(changes)  # type: ignore[typeddict-item]
    return base


@pytest.mark.parametrize(("changes", "event"), [
    ({}, False),
    ({"lastSeenAt": "2026-11-25T18:00:10Z"}, False),
    ({"resources": {"cpuPercent": 90.0, "memoryBytes": 5, "diskBytes": 1}}, False),
    ({"players": {"online": 1, "max": 16}}, False),
    ({"since": "2026-11-25T18:01:00Z"}, False),
    ({"phase": "stopping"}, True),
    ({"ready": False}, True),
    ({"online": False}, True),
    ({"reachable": False}, True),
    ({"reason": "restarting in 2s"}, True),
])
def test_is_event_only_for_phase_ready_online_reachable_reason(changes: dict[str, Any], event: bool) -> None:
    assert is_event(_state(), _state(**changes)) is event


def test_the_first_state_is_an_event() -> None:
    assert is_event(None, _state())


def test_a_restore_in_progress_is_its_own_phase_with_progress() -> None:
    progress = {"operation": "restore", "backupId": "b1", "stage": "verifying", "status": "running",
                "bytesDone": 50, "bytesTotal": 200, "filesDone": 3, "error": None}
    obs = Observation(T0, True, False, status("stopped", busy="restore", progress=progress),
                      reason="restoring")
    state = derive_state("active", obs, None)
    assert state["phase"] == "restoring" and state["ready"] is False and state["online"] is False
    assert state["operation"] == {"name": "restore", "stage": "verifying", "percent": 25.0, "backupId": "b1"}


def test_backup_progress_is_an_event_and_idle_has_no_operation() -> None:
    def backing_up(done: int) -> Observation:
        progress = {"operation": "backup", "backupId": "b2", "stage": "copying", "status": "running",
                    "bytesDone": done, "bytesTotal": 100, "filesDone": 1, "error": None}
        return seen("running", busy="backup", progress=progress)

    first = derive_state("active", backing_up(10), None)
    later = derive_state("active", backing_up(60), first)
    assert first["phase"] == "running" and first["operation"]["percent"] == 10.0  # type: ignore[index]
    assert is_event(first, later), "progress streams as events"
    idle = derive_state("active", seen("running", progress={"operation": "backup", "stage": "done"}), later)
    assert idle["operation"] is None and is_event(later, idle)
