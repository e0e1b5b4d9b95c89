"""Start-to-ready overhead of the agent with the real freeciv template.

Agent: a single-instance agent (``--template freeciv``); the clock runs from
``POST /start`` to the first ``GET /status`` (polled every 5 ms) that says
phase ``running``. A console websocket opened beforehand also timestamps the
server's ready line as it arrives through the agent, and the probe results in
``/status`` say when the log and TCP probes passed, which splits the overhead
into "getting the line out" and "deciding it is ready".

Baseline: ``/usr/games/freeciv-server`` run directly (as uid 65534 through
``setpriv``, since freeciv refuses root), timed from spawn to its line "Now
accepting new client connections on port P." on stdout.

Repetitions alternate direct and agent runs (``--reps``, default 5) after one
untimed direct warm-up run; the server is stopped (``POST /stop``, wait for
``stopped``) between repetitions. The overhead is median(agent) -
median(direct); the floor is under 300 ms.

Run: ``.venv/bin/python bench/start_overhead.py [--reps 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Agent, check_python, free_port, median, temp_dir

check_python()

import httpx  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

FREECIV = "/usr/games/freeciv-server"
NOBODY = 65534
TOKEN = "bench-freeciv-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLOOR_MS = 300.0


def ready_line(port: int) -> str:
    return f"Now accepting new client connections on port {port}."


# -- baseline ---------------------------------------------------------------------------
async def run_direct(home: Path, port: int) -> tuple[float, float]:
    """Seconds from spawn to the server's first line and to its ready line on stdout."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            FREECIV, "-b", "127.0.0.1", "-p", str(port), "-s", str(home / "saves"),
            "-A", "none", "-e", "-d", "n"]
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games", "LANG": "C.UTF-8"}
    want = ready_line(port).encode()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, cwd=home, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"freeciv exited before its ready line: {b''.join(seen[-5:])!r}")
                seen.append(line)
                if len(seen) == 1:
                    first = time.perf_counter() - t0
                if want in line:
                    elapsed = time.perf_counter() - t0
                    break
        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        try:
            async with asyncio.timeout(15):
                await proc.stdout.read()
                await proc.wait()
        except TimeoutError:
            proc.kill()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return first, elapsed


# -- through the agent -------------------------------------------------------------------
@dataclass
class AgentRun:
    running: float  # POST /start -> first /status with phase running
    line_at_ws: float | None  # POST /start -> ready line frame on the console websocket
    first_at_ws: float | None  # POST /start -> first output frame on the console websocket
    log_probe: float | None  # POST /start -> log probe passed (agent's clock)
    tcp_probe: float | None  # POST /start -> tcp probe passed (agent's clock)
    polls: int
    stop: float  # POST /stop -> phase stopped


async def watch_console(ws: ClientConnection, want: str, found: dict[str, float],
                        running: asyncio.Event) -> None:
    """Timestamps the first output line, the ready line and the 'running' status frame."""
    async for text in ws:
        frame = json.loads(text)
        kind = frame.get("type")
        if kind == "output":
            found.setdefault("first", time.perf_counter())
            if want in frame.get("line", ""):
                found.setdefault("line", time.perf_counter())
        elif kind == "status" and frame.get("phase") == "running":
            found.setdefault("running", time.perf_counter())
            running.set()
        if "line" in found and "running" in found:
            return


async def run_agent(agent: Agent, http: httpx.AsyncClient, port: int, poll: bool) -> AgentRun:
    status = (await http.get("/status")).json()
    if status["phase"] != "stopped":
        raise RuntimeError(f"freeciv is {status['phase']} before the start")
    since = status["consoleSeq"]
    found: dict[str, float] = {}
    running_event = asyncio.Event()
    async with connect(f"{agent.ws_url}/console/ws?since={since}", additional_headers=AUTH) as ws:
        watcher = asyncio.create_task(watch_console(ws, ready_line(port), found, running_event))
        await asyncio.sleep(0.05)
        polls = 0
        t0_wall, t0 = time.time(), time.perf_counter()
        r = await http.post("/start")
        if r.status_code != 202:
            raise RuntimeError(f"POST /start -> {r.status_code} {r.text}")
        async with asyncio.timeout(60):
            if poll:
                while True:
                    status = (await http.get("/status")).json()
                    polls += 1
                    if status["phase"] == "running":
                        running = time.perf_counter() - t0
                        break
                    if status["phase"] == "crashed":
                        raise RuntimeError(f"freeciv crashed: {status['reason']}")
                    await asyncio.sleep(0.005)
            else:
                await running_event.wait()
                running = found["running"] - t0
                status = (await http.get("/status")).json()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher, 2)
        watcher.cancel()
    probes = status.get("probes", {})

    def probe_at(name: str) -> float | None:
        at = probes.get(name, {}).get("at")
        return at - t0_wall if isinstance(at, (int, float)) else None

    t_stop = time.perf_counter()
    r = await http.post("/stop")
    if r.status_code != 202:
        raise RuntimeError(f"POST /stop -> {r.status_code} {r.text}")
    async with asyncio.timeout(60):
        while True:
            status = (await http.get("/status")).json()
            if status["phase"] in ("stopped", "crashed") and status["busy"] is None:
                break
            await asyncio.sleep(0.02)
    if status["phase"] != "stopped":
        raise RuntimeError(f"freeciv did not stop cleanly: {status['phase']} {status['reason']}")
    line = found["line"] - t0 if "line" in found else None
    first = found["first"] - t0 if "first" in found else None
    return AgentRun(running, line, first, probe_at("log"), probe_at("tcp"), polls,
                    time.perf_counter() - t_stop)


def ms(value: float | None) -> str:
    return f"{value * 1000:7.0f} ms" if value is not None else "      n/a"


async def bench(args: argparse.Namespace) -> int:
    if not os.access(FREECIV, os.X_OK):
        print(f"start_overhead: {FREECIV} not found (apt-get install freeciv-server)")
        return 2
    if os.geteuid() != 0:
        print("start_overhead: needs root (setpriv to uid 65534 for the direct baseline; the "
              "agent switches to per-instance uids)")
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    direct: list[tuple[float, float]] = []
    agent_runs: list[AgentRun] = []
    with temp_dir("gp-bench-start-") as work:
        home = work / "direct"
        (home / "saves").mkdir(parents=True)
        for path in (home, home / "saves"):
            os.chown(path, NOBODY, NOBODY)
        direct_port, agent_port = free_port(), free_port()
        while agent_port == direct_port:
            agent_port = free_port()
        agent = Agent(work, "freeciv", TOKEN, template="freeciv",
                      extra=["--var", "bind_address=127.0.0.1", "--port", f"game={agent_port}"])
        agent.start()
        try:
            async with httpx.AsyncClient(base_url=agent.url, headers=AUTH, timeout=30) as http:
                _, warm = await run_direct(home, direct_port)
                print(f"  warm-up direct run: {ms(warm)} (not counted)", flush=True)
                for rep in range(1, args.reps + 1):
                    direct.append(await run_direct(home, direct_port))
                    first, ready = direct[-1]
                    print(f"  rep {rep} direct: spawn -> ready line {ms(ready)}  "
                          f"(first line {ms(first)})", flush=True)
                    run = await run_agent(agent, http, agent_port, poll=args.watch == "poll")
                    agent_runs.append(run)
                    print(f"  rep {rep} agent : POST /start -> running {ms(run.running)}  "
                          f"(first line {ms(run.first_at_ws)}, ready line {ms(run.line_at_ws)} "
                          f"on the websocket; log probe {ms(run.log_probe)}, tcp probe "
                          f"{ms(run.tcp_probe)}; {run.polls} /status polls; stop took {run.stop:.2f}s)",
                          flush=True)
        except Exception:
            print(f"--- agent log tail ---\n{agent.log_tail()}", file=sys.stderr)
            raise
        finally:
            agent.stop()

    d = median([r for _, r in direct])
    d_first = median([f for f, _ in direct])
    a = median([r.running for r in agent_runs])
    firsts = [r.first_at_ws for r in agent_runs if r.first_at_ws is not None]
    lines = [r.line_at_ws for r in agent_runs if r.line_at_ws is not None]
    logs = [r.log_probe for r in agent_runs if r.log_probe is not None]
    tcps = [r.tcp_probe for r in agent_runs if r.tcp_probe is not None]
    overhead = (a - d) * 1000
    first_overhead = (median(firsts) - d_first) * 1000 if firsts else float("nan")
    d_range = f"{min(r for _, r in direct) * 1000:.0f}-{max(r for _, r in direct) * 1000:.0f} ms"
    a_range = (f"{min(r.running for r in agent_runs) * 1000:.0f}-"
               f"{max(r.running for r in agent_runs) * 1000:.0f} ms")
    print(f"start_overhead: freeciv-server, median of {args.reps} alternating runs, 'running' "
          f"seen by {'GET /status every 5 ms' if args.watch == 'poll' else 'websocket status frame'} "
          f"(load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, "
          f"{os.cpu_count()} CPUs)")
    print(f"  direct (baseline): spawn -> ready line     {ms(d)}   (range {d_range}; "
          f"first line {ms(d_first).strip()})")
    print(f"  agent            : POST /start -> running  {ms(a)}   (range {a_range})")
    if firsts:
        print(f"    first line on the console websocket  {ms(median(firsts))} "
              f"(+{first_overhead:.0f} ms over direct: HTTP, spawn chain, sandbox)")
    if lines:
        print(f"    ready line on the console websocket  {ms(median(lines))} "
              f"(+{(median(lines) - d) * 1000:.0f} ms over direct)")
    if logs and tcps:
        print(f"    log probe passed {ms(median(logs))}, tcp probe passed {ms(median(tcps))} "
              f"(agent's clock; freeciv listens long before its ready line)")
    if lines:
        print(f"    running after the ready line arrived: +{(a - median(lines)) * 1000:.0f} ms")
    verdict = "meets" if overhead < FLOOR_MS else "ABOVE"
    print(f"  overhead: {overhead:.0f} ms median ({verdict} the {FLOOR_MS:.0f} ms floor); "
          f"ratio agent/direct {a / d:.3f}; to the first line +{first_overhead:.0f} ms")
    elapsed = time.monotonic() - started
    print(f"SUMMARY start_overhead: agent {a * 1000:.0f} ms vs direct {d * 1000:.0f} ms to ready, "
          f"overhead {overhead:.0f} ms ({verdict} floor {FLOOR_MS:.0f} ms), ratio {a / d:.3f}; "
          f"first console line +{first_overhead:.0f} ms ({elapsed:.0f}s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--watch", choices=["poll", "websocket"], default="poll",
                        help="learn 'running' by polling GET /status every 5 ms (default) or from "
                             "the console websocket's status frame (no polling load)")
    return asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
