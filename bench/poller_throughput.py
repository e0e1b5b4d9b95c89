"""Poller throughput: what one control-plane process spends to poll N agents.

The load is ``bench/agent_sim.py``, a separate process answering
``/i/<id>/ready`` and ``/i/<id>/status`` for 5,000 simulated instances on
loopback. This process (the subject) measures, for each HTTP client
(``aiohttp``, the default transport, and ``httpx``, the alternative):

* raw rate (baseline): the HTTP library alone in a tight loop of
  ``GET /i/<id>/status`` with the same concurrency — requests per second and
  CPU microseconds per request;
* burst cycles: ``Poller.poll_once()`` over N = 100, 1,000, 5,000 instances
  (``--sizes``), after one warm-up cycle: wall time and CPU seconds per
  cycle, CPU per instance and per request, and the ratio of the poller's CPU
  per request to the raw loop's (1.0 = no overhead beyond the library);
* paced cycles (``--paced``, on by default): ``Poller.run()`` at the real
  interval (10 s, polls spread over the cycle) for N = 5,000, CPU seconds per
  10 s in steady state — what a deployment pays.

CPU is ``time.process_time()`` of this process only (all its threads; the
simulator's CPU is not counted). The verdict line says whether 5,000
instances every 10 s fit in half a core: CPU per cycle / 10 s <= 0.5.

Run: ``.venv/bin/python bench/poller_throughput.py [--clients aiohttp,httpx]
[--sizes 100,1000,5000] [--cycles 3] [--concurrency 64] [--no-paced] [--uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import check_python, free_port

check_python()

from gameplane.agents.client import (  # noqa: E402
    AgentClient,
    AgentEndpoint,
    AiohttpTransport,
    HttpxTransport,
    Transport,
)
from gameplane.agents.poller import CycleStats, Poller, Target  # noqa: E402
from gameplane.agents.state import NormalizedState  # noqa: E402

TOKEN = "bench-instance-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INTERVAL = 10.0
HALF_CORE = 0.5


def start_simulator(instances: int) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("agent_sim.py")),
                             "--instances", str(instances), "--port", str(port), "--token", TOKEN],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening"):
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}"


def make_transport(name: str, pool: int) -> Transport:
    return AiohttpTransport(pool_size=pool) if name == "aiohttp" else HttpxTransport(pool_size=pool)


# -- baseline: the library alone ---------------------------------------------------------------------
async def _raw_aiohttp(urls: list[str], concurrency: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(urls)

        async def worker() -> None:
            for url in queue:
                async with session.get(url, headers=AUTH, timeout=timeout) as response:
                    json.loads(await response.read())

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _raw_httpx(urls: list[str], concurrency: int) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=5) as client:
        queue = iter(urls)

        async def worker() -> None:
            for url in queue:
                json.loads((await client.get(url, headers=AUTH)).content)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def raw_rate(run: Callable[[Any], None], name: str, base: str, requests: int,
             concurrency: int) -> dict[str, float]:
    loop_fn = {"aiohttp": _raw_aiohttp, "httpx": _raw_httpx}[name]
    warm = [f"{base}/i/sim-{i}/status" for i in range(concurrency * 2)]
    run(loop_fn(warm, concurrency))
    urls = [f"{base}/i/sim-{i % 5000}/status" for i in range(requests)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run(loop_fn(urls, concurrency))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"requests": requests, "rps": requests / wall, "cpu_us_per_request": 1e6 * cpu / requests}


# -- the poller -------------------------------------------------------------------------------------------
def targets_for(base: str, n: int) -> Callable[[], Awaitable[list[Target]]]:
    targets = [Target(f"sim-{i}", AgentEndpoint(f"{base}/i/sim-{i}", TOKEN), "active") for i in range(n)]

    async def source() -> list[Target]:
        return targets

    return source


async def _noop(iid: str, new: NormalizedState, previous: NormalizedState | None) -> None:
    return None


async def burst_cycles(name: str, base: str, n: int, cycles: int, concurrency: int) -> dict[str, float]:
    async with AgentClient(make_transport(name, concurrency), timeout=5, retries=0) as client:
        poller = Poller(client, targets_for(base, n), _noop, interval=INTERVAL, timeout=2.0,
                        concurrency=concurrency)
        warm = await poller.poll_once()
        assert warm.reachable == n, f"warm-up: {warm}"
        walls, cpus, stats = [], [], CycleStats()
        for _ in range(cycles):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            stats = await poller.poll_once()
            cpus.append(time.process_time() - cpu0)
            walls.append(time.perf_counter() - wall0)
            assert stats.reachable == n and stats.errors == 0, stats
    cpu = statistics.median(cpus)
    return {"n": n, "requests": stats.requests, "wall_s": statistics.median(walls), "cpu_s": cpu,
            "cpu_ms_per_instance": 1e3 * cpu / n, "cpu_us_per_request": 1e6 * cpu / stats.requests}


async def paced_cycles(name: str, base: str, n: int, cycles: int, concurrency: int) -> dict[str, float]:
    """``run()`` at the real interval: CPU between the ends of cycle 1 and cycle 1+cycles."""
    marks: list[tuple[float, float]] = []
    done = asyncio.Event()

    async def on_cycle(stats: CycleStats) -> None:
        marks.append((time.process_time(), time.perf_counter()))
        if len(marks) > cycles:
            done.set()

    async with AgentClient(make_transport(name, concurrency), timeout=5, retries=0) as client:
        poller = Poller(client, targets_for(base, n), _noop, interval=INTERVAL, timeout=2.0,
                        concurrency=concurrency, on_cycle=on_cycle)
        task = asyncio.create_task(poller.run())
        await done.wait()
        await poller.shutdown()
        await task
    cpu = (marks[-1][0] - marks[0][0]) / cycles
    wall = (marks[-1][1] - marks[0][1]) / cycles
    return {"n": n, "cycles": cycles, "wall_per_cycle_s": wall, "cpu_s_per_cycle": cpu,
            "cores": cpu / INTERVAL}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="aiohttp,httpx")
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--raw-requests", type=int, default=10000)
    parser.add_argument("--paced-cycles", type=int, default=2)
    parser.add_argument("--no-paced", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run the poller on uvloop (uvicorn's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    clients = args.clients.split(",")

    run: Callable[[Any], Any] = asyncio.run
    if args.uvloop:
        import uvloop

        run = uvloop.run
    try:
        import sniffio  # noqa: F401

        sniffio_note = "sniffio installed"
    except ImportError:
        sniffio_note = "sniffio NOT installed: httpcore retries 'import sniffio' on every lock"

    sim, base = start_simulator(max(max(sizes), 5000))
    results: dict[str, Any] = {"loop": "uvloop" if args.uvloop else "asyncio",
                               "concurrency": args.concurrency, "note": sniffio_note, "clients": {}}
    print(f"poller throughput — loop {results['loop']}, concurrency {args.concurrency}, "
          f"simulator pid {sim.pid} at {base}; {sniffio_note}")
    try:
        for name in clients:
            figures: dict[str, Any] = {}
            raw = raw_rate(run, name, base, args.raw_requests, args.concurrency)
            figures["raw"] = raw
            print(f"\n[{name}] raw GET loop: {raw['rps']:,.0f} req/s, "
                  f"{raw['cpu_us_per_request']:.0f} µs CPU/req")
            print(f"  {'N':>6} {'req/cycle':>10} {'wall s':>8} {'CPU s':>8} {'CPU ms/inst':>12} "
                  f"{'CPU µs/req':>11} {'vs raw':>7} {'req/s':>8}")
            figures["burst"] = []
            for n in sizes:
                b = run(burst_cycles(name, base, n, args.cycles, args.concurrency))
                b["overhead_vs_raw"] = b["cpu_us_per_request"] / raw["cpu_us_per_request"]
                b["rate_vs_raw"] = (b["requests"] / b["wall_s"]) / raw["rps"]
                figures["burst"].append(b)
                print(f"  {n:>6} {b['requests']:>10} {b['wall_s']:>8.2f} {b['cpu_s']:>8.2f} "
                      f"{b['cpu_ms_per_instance']:>12.3f} {b['cpu_us_per_request']:>11.0f} "
                      f"{b['overhead_vs_raw']:>6.2f}x {b['requests'] / b['wall_s']:>8,.0f}")
            big = max(sizes)
            burst_big = next(b for b in figures["burst"] if b["n"] == big)
            if not args.no_paced and burst_big["cpu_s"] < INTERVAL:
                p = run(paced_cycles(name, base, big, args.paced_cycles, args.concurrency))
                figures["paced"] = p
                print(f"  paced run(): N={big}, {p['cycles']} cycles of {p['wall_per_cycle_s']:.2f}s, "
                      f"{p['cpu_s_per_cycle']:.2f} CPU s per cycle = {p['cores']:.3f} cores")
            # Paced (what a deployment pays) when measured, else the burst cycle; scaled
            # linearly to 5,000 when the largest size measured is another.
            measured = figures["paced"]["cpu_s_per_cycle"] if "paced" in figures else burst_big["cpu_s"]
            per_cycle = measured * 5000 / big
            source = ("paced" if "paced" in figures else "burst") + (
                "" if big == 5000 else f", extrapolated from N={big}")
            cores = per_cycle / INTERVAL
            fits = cores <= HALF_CORE
            figures["verdict"] = {"cpu_s_per_cycle_5000": per_cycle, "cores": cores, "fits_half_core": fits,
                                  "from": source}
            print(f"  VERDICT [{name}]: 5,000 instances every 10 s -> {per_cycle:.2f} CPU s per cycle "
                  f"({source}) = {cores:.3f} cores: {'FITS' if fits else 'DOES NOT FIT'} in half a core")
            results["clients"][name] = figures
    finally:
        sim.terminate()
        sim.wait(10)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
