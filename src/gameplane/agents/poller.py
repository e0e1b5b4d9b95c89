"""The heartbeat: the control plane polls every instance's agent and keeps one
normalized state per instance (DESIGN.md section 4). Agents never push.

One cycle, every ``interval`` seconds:

1. ``targets()`` says what to poll: ``(instance_id, endpoint, lifecycle)``
   (optionally a fourth item, the lifecycle's reason).
2. Each target is polled at a fixed offset inside the cycle — a hash of its
   id spread over ``interval - 2 * timeout``, released in ``tick``s — so
   requests are spread out and a target is polled every ``interval`` seconds
   exactly; ``concurrency`` workers bound how many polls are in flight.
3. A poll is ``GET /ready`` then ``GET /status`` (see ``Poller._observe`` for
   why not ``/health``), each with ``timeout`` and no retry inside the cycle:
   the next cycle is the retry, and a retry now would only delay the verdict.
4. The observation becomes the normalized state (``state.derive_state``);
   when it differs in a way that is an event (``state.is_event``),
   ``on_change(instance_id, new, previous)`` is awaited.

Timing guarantees (``timeout < interval``): a target polled at offset ``o`` of
cycle k is polled again at ``o`` of cycle k+1, and a poll of a dead agent
(refused) or a hung one (accepts TCP, never answers) ends within ``timeout``.
So an agent that dies just after a good poll is ``unreachable`` at most
``interval + timeout`` later: within two intervals, and never ``ready``
meanwhile past that first failed poll.

Backoff: the first failed poll marks the instance unreachable at once. After
``n`` consecutive polls without an answer, the next attempt is ``2**(n-1)``
cycles later (1, 2, 4, 8, ...), at most ``max_backoff`` seconds; one answer
resets it. An agent that answers with an error (401, 5xx) is not backed off:
it answers quickly and costs nothing while it does.

Time comes from an injected ``Clock`` so tests drive it by hand
(``gameplane.agents.testing.ManualClock``); HTTP goes through the injected
``AgentClient`` (a ``MockTransport`` in unit tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from gameplane.agents.client import AgentClient, AgentEndpoint, AgentResult, FailureKind, not_ready_reason
from gameplane.agents.state import (
    LIFECYCLES,
    NormalizedState,
    Observation,
    derive_state,
    is_event,
)

log = logging.getLogger(__name__)

__all__ = ["NOT_POLLED", "Clock", "CycleStats", "OnChange", "Poller", "SystemClock", "Target", "Targets"]

#: Lifecycles whose agent is not polled: there is nothing left to see.
NOT_POLLED = frozenset({"failed", "deleting"})


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time, timezone-aware UTC (for ``since`` and ``lastSeenAt``)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for scheduling)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Target(NamedTuple):
    instance_id: str
    endpoint: AgentEndpoint | None  # None: nothing to poll (e.g. a failed instance)
    lifecycle: str
    lifecycle_reason: str | None = None


Targets = Callable[[], Awaitable[Sequence[Target | tuple[str, AgentEndpoint | None, str]]]]
OnChange = Callable[[str, NormalizedState, NormalizedState | None], Awaitable[None]]
OnCycle = Callable[["CycleStats"], Awaitable[None]]


@dataclass
class CycleStats:
    """What one cycle did. ``duration`` is on the poller's clock."""

    targets: int = 0
    polled: int = 0
    skipped: int = 0  # in backoff this cycle
    requests: int = 0
    reachable: int = 0
    unreachable: int = 0
    ready: int = 0
    changes: int = 0
    errors: int = 0
    duration: float = 0.0


@dataclass(slots=True)
class _Track:
    """What the poller keeps per instance."""

    offset: float  # 0..1: where in the cycle this instance is polled
    state: NormalizedState | None = None
    observation: Observation | None = None
    lifecycle: str | None = None
    failures: int = 0  # consecutive polls without an answer
    skip: int = 0  # cycles still to skip (backoff)
    started: int = 0  # polls started; a slow poll cannot overwrite a newer one
    committed: int = 0


class Poller:
    def __init__(self, client: AgentClient, targets: Targets, on_change: OnChange | None = None, *,
                 interval: float = 10.0, concurrency: int = 64, timeout: float = 2.0,
                 max_backoff: float = 60.0, spread: bool = True, tick: float | None = None,
                 clock: Clock | None = None, on_cycle: OnCycle | None = None):
        if interval <= 0 or timeout <= 0 or concurrency < 1:
            raise ValueError("interval and timeout must be positive, concurrency at least 1")
        if timeout >= interval:
            raise ValueError("timeout must be shorter than the interval (a hung agent must be "
                             "unreachable within two intervals)")
        self.client = client
        self._targets = targets
        self._on_change = on_change
        self._on_cycle = on_cycle
        self.interval = interval
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_backoff_cycles = max(1, int(max_backoff // interval))
        self.spread = spread
        self.tick = tick if tick is not None else interval / 20
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._tracks: dict[str, _Track] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cycle_lock = asyncio.Lock()  # poll_once() during run(): one cycle at a time
        self.last_cycle: CycleStats | None = None

    # -- reading ------------------------------------------------------------------------------------
    def state(self, instance_id: str) -> NormalizedState | None:
        """The cached normalized state, or None for an instance not seen yet."""
        track = self._tracks.get(instance_id)
        return track.state if track is not None else None

    def states(self) -> dict[str, NormalizedState]:
        return {iid: t.state for iid, t in self._tracks.items() if t.state is not None}

    def seed(self, states: Mapping[str, NormalizedState]) -> None:
        """Start from persisted states (after an API restart), so ``since``
        survives and an unchanged instance is not an event."""
        for iid, state in states.items():
            self._track(iid).state = state

    @property
    def window(self) -> float:
        """How much of a cycle the polls are spread over."""
        return max(0.0, self.interval - 2 * self.timeout)

    def backoff_cycles(self, failures: int) -> int:
        """Cycles from a failed poll to the next attempt, after ``failures``
        consecutive polls without an answer (1 = the next cycle)."""
        if failures <= 0:
            return 1
        return int(min(2 ** min(failures - 1, 30), self.max_backoff_cycles))

    # -- running ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Poll every ``interval`` until cancelled or ``shutdown()``. A cycle
        that fails (``targets()`` raised) is logged and the next one runs."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the poller is already running")
        self._task = asyncio.current_task()
        try:
            while not self._stopping:
                started = self.clock.monotonic()
                try:
                    await self._cycle(self.spread)
                except Exception:
                    log.exception("poll cycle failed")
                if self._stopping:
                    break
                delay = started + self.interval - self.clock.monotonic()
                if delay > 0:
                    await self.clock.sleep(delay)
                else:
                    log.warning("poll cycle took %.2fs, more than the %.2fs interval",
                                self.clock.monotonic() - started, self.interval)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Our own shutdown() cancelled us: end normally. Anyone else's cancel propagates.
            if self._stopping and task is not None and task.uncancel() == 0:
                return
            raise

    async def shutdown(self) -> None:
        """Stop ``run()`` and wait for it; safe to call twice, or before ``run()``."""
        self._stopping = True
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait({task})

    async def poll_once(self, *, spread: bool = False) -> CycleStats:
        """One full cycle now (spread over the cycle's window when ``spread``)."""
        return await self._cycle(spread)

    async def poll_now(self, instance_id: str, endpoint: AgentEndpoint | None,
                       lifecycle: str) -> NormalizedState:
        """Poll one instance at once (after a power action, at activation),
        outside the cycle and its concurrency bound; returns the new state."""
        stats = CycleStats(targets=1)
        await self._poll(Target(instance_id, endpoint, lifecycle), stats)
        state = self.state(instance_id)
        assert state is not None
        return state

    # -- one cycle ----------------------------------------------------------------------------------
    def _track(self, instance_id: str) -> _Track:
        track = self._tracks.get(instance_id)
        if track is None:
            offset = zlib.crc32(instance_id.encode()) / 2**32
            track = self._tracks[instance_id] = _Track(offset)
        return track

    async def _cycle(self, spread: bool) -> CycleStats:
        async with self._cycle_lock:
            return await self._locked_cycle(spread)

    async def _locked_cycle(self, spread: bool) -> CycleStats:
        clock = self.clock
        started = clock.monotonic()
        raw_targets = await self._targets()
        stats = CycleStats(targets=len(raw_targets))
        plan: list[tuple[float, Target]] = []
        for raw in raw_targets:
            target = raw if isinstance(raw, Target) else Target(*raw)
            if target.lifecycle not in LIFECYCLES:
                log.error("instance %s: unknown lifecycle %r, not polled",
                          target.instance_id, target.lifecycle)
                stats.errors += 1
                continue
            plan.append((self._track(target.instance_id).offset, target))
        window = self.window if spread else 0.0
        if window:
            plan.sort(key=lambda item: item[0])
        queue: asyncio.Queue[Target | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.concurrency, len(plan))):
                group.create_task(self._worker(queue, stats))
            for offset, target in plan:
                if window:
                    # Released in ticks (interval / 20 by default), not one sleep per
                    # target: a tick's polls share the event loop's wake-ups, which
                    # saves about a tenth of the CPU at 5,000 instances.
                    due = started + (offset * window) // self.tick * self.tick
                    delay = due - clock.monotonic()
                    if delay > 0:
                        await clock.sleep(delay)
                track = self._tracks[target.instance_id]
                if target.lifecycle not in NOT_POLLED and target.endpoint is not None and track.skip > 0:
                    track.skip -= 1
                    stats.skipped += 1
                    if target.lifecycle != track.lifecycle:
                        await self._commit(target, track, None, stats)
                    continue
                queue.put_nowait(target)
            for _ in range(min(self.concurrency, len(plan))):
                queue.put_nowait(None)
        current = {target.instance_id for _, target in plan}
        for gone in [iid for iid in self._tracks if iid not in current]:
            del self._tracks[gone]
        stats.duration = clock.monotonic() - started
        self.last_cycle = stats
        if self._on_cycle is not None:
            try:
                await self._on_cycle(stats)
            except Exception:
                log.exception("on_cycle listener failed")
        return stats

    async def _worker(self, queue: asyncio.Queue[Target | None], stats: CycleStats) -> None:
        while (target := await queue.get()) is not None:
            await self._poll(target, stats)

    async def _poll(self, target: Target, stats: CycleStats) -> None:
        track = self._track(target.instance_id)
        try:
            if target.lifecycle in NOT_POLLED or target.endpoint is None:
                await self._commit(target, track, None, stats)
                return
            track.started += 1
            ticket = track.started
            observation = await self._observe(target.endpoint, stats)
            stats.polled += 1
            if ticket < track.committed:
                return  # a newer poll of this instance (poll_now) finished first
            track.committed = ticket
            if observation.reachable:
                track.failures = track.skip = 0
                stats.reachable += 1
            else:
                track.failures += 1
                track.skip = self.backoff_cycles(track.failures) - 1
                stats.unreachable += 1
            await self._commit(target, track, observation, stats)
        except Exception:
            stats.errors += 1
            log.exception("polling instance %s failed", target.instance_id)

    async def _commit(self, target: Target, track: _Track, observation: Observation | None,
                      stats: CycleStats) -> None:
        """Derive the new state from a fresh ``observation`` (or, without one,
        from the last one, at the clock's time); tell ``on_change`` when it is
        an event."""
        now: datetime | None = None
        if observation is None:
            now = self.clock.now()
            if target.lifecycle not in NOT_POLLED:
                observation = track.observation  # no new poll: the last one still stands
        else:
            track.observation = observation
        previous = track.state
        new = derive_state(target.lifecycle, observation, previous, now=now,
                           lifecycle_reason=target.lifecycle_reason)
        track.state = new
        track.lifecycle = target.lifecycle
        if new["ready"]:
            stats.ready += 1
        if is_event(previous, new):
            stats.changes += 1
            log.debug("instance %s: %s -> %s (%s)", target.instance_id,
                      previous["phase"] if previous else None, new["phase"], new["reason"])
            if self._on_change is not None:
                try:
                    await self._on_change(target.instance_id, new, previous)
                except Exception:
                    log.exception("on_change listener failed for instance %s", target.instance_id)

    async def _observe(self, ep: AgentEndpoint, stats: CycleStats) -> Observation:
        """``GET /ready`` then ``GET /status``: two requests per answering agent,
        one per silent one.

        ``/health`` is not asked. Its contract is "200 while the agent can
        answer", and any HTTP answer to ``/ready`` (200, 503, even 401) already
        proves exactly that; when ``/ready`` gets no answer, ``/health`` at the
        same address, served by the same process, cannot get one either.
        Asking it would add a request per instance per cycle, and a second
        timeout for every hung agent. ``/status`` is asked every cycle: it
        carries the workload phase and the resources.
        """
        client, timeout = self.client, self.timeout
        ready = await client.get_agent_ready(ep, timeout=timeout, retries=0)
        stats.requests += 1
        if not ready.answered or ready.failure is FailureKind.AUTH:
            return self._failed(ready)
        status = await client.get_result(ep, "/status", timeout=timeout, retries=0)
        stats.requests += 1
        if not status.answered or status.failure is FailureKind.AUTH:
            return self._failed(status)
        reason = None if ready.ready else not_ready_reason(ready)
        if status.status_code == 200 and status.failure is FailureKind.NONE and isinstance(status.body, dict):
            return Observation(self.clock.now(), True, ready.ready, status.body, FailureKind.NONE, reason)
        return Observation(self.clock.now(), True, ready.ready, None, FailureKind.BAD_RESPONSE,
                           f"bad answer from the agent: {status.describe()}")

    def _failed(self, result: AgentResult) -> Observation:
        return Observation(self.clock.now(), result.answered, False, None, result.failure,
                           not_ready_reason(result))
