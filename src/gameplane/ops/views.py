"""Operations routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from gameplane.agents.poller import Poller

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """The API can serve: its database answers and the poller runs."""
    problems = []
    try:
        async with request.app.state.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means not ready
        problems.append(f"database: {exc.__class__.__name__}")
    poller: Poller = request.app.state.poller
    task = request.app.state.poller_task
    if task is None or task.done():
        problems.append("poller not running")
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503)
    return JSONResponse({"ready": True, "instances": len(poller.states())})


class PollerCollector(Collector):
    """Read at scrape time from the poller's cache: no bookkeeping on the hot path."""

    def __init__(self, poller: Poller):
        self.poller = poller

    def collect(self) -> Iterator[Metric]:
        phases = Counter(state["phase"] for state in self.poller.states().values())
        gauge = GaugeMetricFamily("gameplane_instances", "Instances by normalized phase", labels=["phase"])
        for phase, count in sorted(phases.items()):
            gauge.add_metric([phase], count)
        yield gauge
        cycle = self.poller.last_cycle
        if cycle is not None:
            yield GaugeMetricFamily("gameplane_poll_cycle_seconds", "Duration of the last poll cycle",
                                    value=cycle.duration)
            yield GaugeMetricFamily("gameplane_poll_targets", "Targets in the last poll cycle",
                                    value=cycle.targets)
            yield GaugeMetricFamily("gameplane_poll_unreachable", "Unreachable agents in the last cycle",
                                    value=cycle.unreachable)
            yield GaugeMetricFamily("gameplane_poll_requests", "Agent requests in the last cycle",
                                    value=cycle.requests)


def metrics_registry(poller: Poller) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PollerCollector(poller))
    return registry


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
