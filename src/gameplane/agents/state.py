"""The API-normalized state of an instance (DESIGN.md section 4), derived —
by a pure function — from three things:

- the instance's *lifecycle* in the database: ``provisioning``, ``active``,
  ``failed``, ``deleting`` or ``suspended``;
- the poller's latest ``Observation`` of its agent (``/ready`` + ``/status``);
- the previous normalized state, so ``since`` stays put while the phase does
  and ``lastSeenAt`` survives an agent that stopped answering.

Rules (first match wins):

1. A lifecycle other than ``active`` is the phase; the instance is then
   neither ready nor online for its users (``reachable`` and resources still
   report what the agent said, if it answered). ``reason`` is the lifecycle's
   reason given by the caller (e.g. why provisioning failed).
2. No observation yet: ``unreachable``, "not polled yet".
3. The agent gave no answer (refused, reset, timed out): ``unreachable``,
   ``reachable: false``, the reason says which.
4. The agent answered but the answer cannot be used (401 to the control
   plane's token, a 5xx, a body that is not JSON, an unknown phase):
   ``unreachable`` with ``reachable: true`` and the reason.
5. Otherwise the phase is the agent's workload phase (``stopped``,
   ``starting``, ``running``, ``stopping``, ``crashed``); ``ready`` is the
   semantic readiness of ``/ready`` (``is_agent_ready_result``), ``online`` is
   ``phase == "running"``, ``reason`` is ``/ready``'s reason while not ready,
   else ``/status``'s.

Timestamps are ISO 8601 in UTC with a ``Z``, to the second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, get_args

from gameplane.agents.client import FailureKind

__all__ = [
    "EVENT_FIELDS",
    "LIFECYCLES",
    "WORKLOAD_PHASES",
    "Lifecycle",
    "NormalizedState",
    "Observation",
    "Players",
    "Resources",
    "derive_state",
    "is_event",
    "iso_utc",
]

Lifecycle = Literal["provisioning", "active", "failed", "deleting", "suspended"]
LIFECYCLES: frozenset[str] = frozenset(get_args(Lifecycle))
WORKLOAD_PHASES: frozenset[str] = frozenset({"stopped", "starting", "running", "stopping", "crashed"})
#: The fields whose change is an event (``GET /api/events``); resources and
#: ``lastSeenAt`` change every poll and are not.
EVENT_FIELDS = ("phase", "ready", "online", "reachable", "reason", "operation")


class Resources(TypedDict):
    cpuPercent: float | None
    memoryBytes: int | None
    diskBytes: int | None


class Players(TypedDict):
    online: int | None
    max: int | None


class Operation(TypedDict):
    """A long operation in progress on the agent (a backup, a restore)."""

    name: str
    stage: str | None
    percent: float | None
    backupId: str | None


class NormalizedState(TypedDict):
    phase: str
    ready: bool
    online: bool
    reachable: bool
    since: str
    lastSeenAt: str | None
    reason: str | None
    resources: Resources
    players: Players
    operation: Operation | None


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll of an agent saw.

    ``reachable``: the agent answered HTTP at all. ``ready``: ``/ready`` was a
    semantic success. ``status``: the ``/status`` JSON object, or None when it
    could not be had. ``failure``: why the poll could not be used, if it
    could not. ``reason``: a sentence for the user (the failure, or
    ``/ready``'s reason when not ready).
    """

    at: datetime
    reachable: bool
    ready: bool
    status: Mapping[str, Any] | None = None
    failure: FailureKind = FailureKind.NONE
    reason: str | None = None


def iso_utc(moment: datetime) -> str:
    """``2026-11-25T18:00:04Z``; a naive datetime is refused."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Gameplane uses timezone-aware datetimes only")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: Any) -> Any:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _resources(status: Mapping[str, Any] | None) -> Resources:
    raw = status.get("resources") if status is not None else None
    if not isinstance(raw, Mapping):
        return {"cpuPercent": None, "memoryBytes": None, "diskBytes": None}
    return {"cpuPercent": _number(raw.get("cpuPercent")), "memoryBytes": _number(raw.get("memoryBytes")),
            "diskBytes": _number(raw.get("diskBytes"))}


def _players(status: Mapping[str, Any] | None) -> Players:
    raw = status.get("players") if status is not None else None
    if not isinstance(raw, Mapping):
        return {"online": None, "max": None}
    online, most = raw.get("online"), raw.get("max")
    return {"online": online if isinstance(online, int) and not isinstance(online, bool) else None,
            "max": most if isinstance(most, int) and not isinstance(most, bool) else None}


_NO_ANSWER = {FailureKind.UNREACHABLE: "agent unreachable",
              FailureKind.TIMEOUT: "agent did not answer in time"}
_UNUSABLE = {FailureKind.AUTH: "the agent refused the control plane's credentials (401)",
             FailureKind.BAD_RESPONSE: "bad answer from the agent"}


def _operation(status: Mapping[str, Any] | None) -> Operation | None:
    """The agent's busy operation and its progress; None when idle. Its
    changes are events, so a long backup's stages and percentage stream to
    the portal at the poll interval."""
    busy = status.get("busy") if status else None
    if not isinstance(busy, str) or status is None:
        return None
    progress = status.get("progress")
    progress = progress if isinstance(progress, dict) and progress.get("operation") == busy else {}
    done, total = progress.get("bytesDone"), progress.get("bytesTotal")
    percent = (round(100.0 * done / total, 1) if isinstance(done, int) and isinstance(total, int)
               and total > 0 else None)
    stage, backup_id = progress.get("stage"), progress.get("backupId")
    return {"name": busy, "stage": stage if isinstance(stage, str) else None, "percent": percent,
            "backupId": backup_id if isinstance(backup_id, str) else None}


def derive_state(lifecycle: Lifecycle | str, observation: Observation | None,
                 previous: NormalizedState | None, *, now: datetime | None = None,
                 lifecycle_reason: str | None = None) -> NormalizedState:
    """The normalized state (rules in the module docstring).

    ``now`` is when the state is derived; it defaults to the observation's
    time and is required without one. It becomes ``since`` when the phase
    changed.
    """
    if lifecycle not in LIFECYCLES:
        raise ValueError(f"unknown lifecycle {lifecycle!r}; expected one of {sorted(LIFECYCLES)}")
    if now is None:
        if observation is None:
            raise ValueError("now is required when there is no observation")
        now = observation.at
    obs = observation
    status = obs.status if obs is not None else None
    reachable = obs is not None and obs.reachable
    ready = online = False
    reason: str | None

    if lifecycle != "active":
        phase, reason = lifecycle, lifecycle_reason
    elif obs is None:
        phase, reason = "unreachable", "not polled yet"
    elif not obs.reachable:
        phase = "unreachable"
        reason = obs.reason or _NO_ANSWER.get(obs.failure, "agent unreachable")
    elif obs.failure is not FailureKind.NONE or status is None:
        phase = "unreachable"
        reason = obs.reason or _UNUSABLE.get(obs.failure, "the agent's status could not be read")
    elif status.get("phase") not in WORKLOAD_PHASES:
        phase, reason = "unreachable", f"bad answer from the agent: unknown phase {status.get('phase')!r}"
    elif status.get("busy") == "restore":
        # The workload is stopped while its data is swapped: say so, not "stopped".
        phase, reason = "restoring", None
    else:
        phase = str(status["phase"])
        ready = obs.ready
        online = phase == "running"
        status_reason = status.get("reason")
        reason = obs.reason if not ready and obs.reason else (
            status_reason if isinstance(status_reason, str) else None)

    since = previous["since"] if previous is not None and previous["phase"] == phase else iso_utc(now)
    if obs is not None and obs.reachable:
        last_seen: str | None = iso_utc(obs.at)
    else:
        last_seen = previous["lastSeenAt"] if previous is not None else None
    return {"phase": phase, "ready": ready, "online": online, "reachable": reachable, "since": since,
            "lastSeenAt": last_seen, "reason": reason, "resources": _resources(status),
            "players": _players(status), "operation": _operation(status)}


def is_event(previous: NormalizedState | None, current: NormalizedState) -> bool:
    """Whether going from ``previous`` to ``current`` is an event (a change in
    one of ``EVENT_FIELDS``; the first state always is)."""
    if previous is None:
        return True
    return any(previous.get(field) != current.get(field) for field in EVENT_FIELDS)
