"""An in-process sliding-window rate limiter for the auth routes.

Each key (``"login:account:<email>"``, ``"login:address:<ip>"`` …) keeps the
times of its recent attempts; an attempt over the limit raises
:class:`~gameplane.errors.RateLimited` with the wait until the oldest attempt
leaves the window, and is not counted.

Scope: one API process. With several replicas each one counts on its own, so
an attacker gets ``replicas x limit``; a shared limiter would keep the windows
in PostgreSQL (an ``attempts(key, at)`` table, a ``count(*) WHERE at > now() -
window`` under an advisory lock per key, or a fixed-window counter upserted
with ``INSERT … ON CONFLICT DO UPDATE``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from gameplane.errors import RateLimited

#: forget idle keys every this many attempts, so spraying addresses cannot grow memory forever
_SWEEP_EVERY = 1024


class RateLimiter:
    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._since_sweep = 0

    def hit(self, *keys: tuple[str, int]) -> None:
        """Count one attempt against each ``(key, limit)``, or raise ``RateLimited`` if
        any key already has ``limit`` attempts in the window. All keys are checked
        before any is counted, so a refused attempt does not extend the wait."""
        now = self.clock()
        recent = [(self._recent(key, now), limit) for key, limit in keys]
        waits = [hits[0] + self.window - now for hits, limit in recent if len(hits) >= limit]
        if waits:
            raise RateLimited(max(waits))
        for hits, _ in recent:
            hits.append(now)
        self._since_sweep += 1
        if self._since_sweep >= _SWEEP_EVERY:
            self._sweep(now)

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[key]
