"""Console through the API's websocket proxy against the agent's websocket
directly, in the same run: lines per second, and per-line latency at a fixed
rate.

One ``gameplane up`` (SQLite, its local node agent) in a temp dir, with two
bench templates:

* **throughput**: ``benchspew`` (the workload of ``console_throughput.py``)
  prints N numbered lines of 60 bytes at start into a buffer larger than N;
  once the agent holds them all, each run replays the N lines to a new
  websocket with ``since=0``; the rate is N over the time from the first
  output frame to line N (a replay at these rates takes a fraction of a
  second, so the handshake — for the proxy also the ticket's redemption and
  the connection to the agent — would weigh on it: it is reported apart, as
  the time from opening the socket to the first line). A batch replay takes
  only ~0.1 s, so a batch run is ``--batch-passes`` (5) replays on fresh
  sockets, back to back, their streaming times summed. Four modes alternate
  (the order rotates per repetition), ``--reps`` times each, medians
  reported: the agent's ``/console/ws`` directly (with the instance token)
  and the API's ``/api/game/servers/:id/console`` (a ticket fetched before
  the clock starts, ``Origin`` sent as a browser would), each in per-line
  frames and with ``batch=1``. Every line is
  checked as in console_throughput (sequence continuity, content samples).
  The ratio is proxy / direct per frame shape; the issue's floor is 0.7.
* **latency**: ``benchtick`` prints, on the command ``"N R"``, N lines at R a
  second (absolute deadlines, flushed each), each carrying ``time.time()``
  when printed. Two readers listen to the same lines at the same time — one
  on the agent directly, one through the proxy — and take ``time.time()`` on
  arrival; latency = arrival - print. Once in per-line frames, once with
  ``batch=1``. Added p99 = proxy p99 - direct p99; the floor is 5 ms at 1,000
  lines/s. Each of ``--reps`` windows gives a p50 and p99 per reader; the
  medians over the windows are reported (added p99: the median of the
  windows' differences).

The client offers permessage-deflate as browsers do; API and agent both
decline it (``ws_per_message_deflate=False``), and what was negotiated is
printed. CPU seconds of the API and agent processes per run show where the
time goes.

Run: ``.venv/bin/python bench/console_proxy.py [--lines 200000] [--reps 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import check_python, cpu_seconds, median, temp_dir

check_python()

import httpx  # noqa: E402
from tests.controlplane import ControlPlane  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from console_throughput import Receiver, template_text  # noqa: E402

THROUGHPUT_FLOOR = 0.7  # proxy / direct
LATENCY_FLOOR_MS = 5.0  # added p99
MODES = ("direct-line", "proxy-line", "direct-batch", "proxy-batch")
TICK = """\
import sys, time
print("ready", flush=True)
for cmd in sys.stdin:
    n, rate = cmd.split()
    n, rate = int(n), float(rate)
    t0 = time.time() + 0.05
    w, flush, now, sleep = sys.stdout.write, sys.stdout.flush, time.time, time.sleep
    for i in range(n):
        wait = t0 + i / rate - now()
        if wait > 0:
            sleep(wait)
        w("tick %d %.6f\\n" % (i, now()))
        flush()
"""
TICK_TEMPLATE = f"""\
[template]
name = "benchtick"
description = "gameplane console latency benchmark workload"

[start]
command = ["/usr/bin/python3", "-u", "-c", '''{TICK}''']

[console]
type = "stdin"
buffer_lines = 100000

[ready]
log = "^ready$"
"""


@dataclass
class Server:
    id: str
    agent_ws: str  # ws://…/i/<id>/console/ws
    agent_http: str
    headers: dict[str, str]


class Bench:
    def __init__(self, cp: ControlPlane, lines: int):
        self.cp = cp
        self.lines = lines
        self.http = httpx.Client(base_url=cp.url, timeout=30)

    def server(self, name: str, template: str) -> Server:
        sid = self.cp.create(name, template)["id"]
        self.cp.wait_phase(sid, "stopped", timeout=60)
        self.cp.power(sid, "start")
        self.cp.wait_phase(sid, "running", timeout=60)
        with sqlite3.connect(self.cp.data_dir / "gameplane.db") as db:
            url, token = db.execute("SELECT agent_url, agent_token FROM instances WHERE id = ?",
                                    (sid,)).fetchone()
        return Server(sid, url.replace("http", "ws", 1) + "/console/ws", url,
                      {"Authorization": f"Bearer {token}"})

    def console_seq(self, server: Server) -> int:
        seq: int = httpx.get(server.agent_http + "/status", headers=server.headers).json()["consoleSeq"]
        return seq

    def connect(self, server: Server, via: str, query: str) -> connect:
        """A websocket to open (for the proxy with a ticket, fetched now)."""
        if via == "direct":
            return connect(f"{server.agent_ws}?{query}", additional_headers=server.headers, max_size=None)
        r = self.cp.request("POST", f"/api/game/servers/{server.id}/console/ticket")
        assert r.status_code == 200, r.text
        return connect(f"{r.json()['url']}&{query}", origin=self.cp.url, max_size=None)  # type: ignore[arg-type]

    def pids(self) -> tuple[int, int]:
        agent = self.cp.agent_process()
        assert self.cp.proc is not None and agent is not None
        return self.cp.proc.pid, agent.pid

    # -- throughput ------------------------------------------------------------------------
    async def replay(self, server: Server, mode: str, passes: int) -> dict[str, Any]:
        """``passes`` replays, one socket each, back to back; the rate is their lines over
        their summed streaming times (first line to line N), CPU per line over all."""
        via, shape = mode.split("-")
        api_pid, agent_pid = self.pids()
        cpu0 = (cpu_seconds(api_pid), cpu_seconds(agent_pid), time.process_time())
        streaming = first = 0.0
        errors: list[str] = []
        extensions = ""
        for _ in range(passes):
            rx = Receiver(self.lines, batch=shape == "batch")
            opening = self.connect(server, via, "since=0" + ("&batch=1" if shape == "batch" else ""))
            t0 = time.perf_counter()
            async with opening as ws:
                async with asyncio.timeout(120):
                    await rx.run(ws)
                streaming += time.perf_counter() - rx.t_first
                first += rx.t_first - t0
                extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else ""
            errors += rx.errors
            if rx.count != self.lines:
                errors.append(f"{mode}: received {rx.count} of {self.lines} ({rx.lost} in gaps)")
        lines = self.lines * passes
        return {"rate": lines / streaming, "first": first / passes,
                "api_cpu": (cpu_seconds(api_pid) - cpu0[0]) / lines,
                "agent_cpu": (cpu_seconds(agent_pid) - cpu0[1]) / lines,
                "client_cpu": (time.process_time() - cpu0[2]) / lines,
                "extensions": extensions or "none", "errors": errors}

    # -- latency ---------------------------------------------------------------------------
    async def latency(self, server: Server, shape: str, count: int, rate: float) -> dict[str, list[float]]:
        since = self.console_seq(server)
        query = f"since={since}" + ("&batch=1" if shape == "batch" else "")
        found: dict[str, list[float]] = {}

        async def read(via: str, ws: ClientConnection) -> None:
            lat = found.setdefault(via, [])
            async with asyncio.timeout(count / rate + 30):
                while len(lat) < count:
                    frame = json.loads(await ws.recv())
                    now = time.time()
                    if frame["type"] == "gap":
                        raise RuntimeError(f"{via}: lines lost {frame}")
                    if frame["type"] != "output":
                        continue
                    for line in frame.get("lines") or [frame["line"]]:
                        lat.append(now - float(line.split()[2]))

        async with self.connect(server, "direct", query) as direct, \
                self.connect(server, "proxy", query) as proxy:
            await asyncio.sleep(0.3)  # both readers are live before the first line
            r = self.cp.request("POST", f"/api/game/servers/{server.id}/console/command",
                                json={"command": f"{count} {rate}"})
            assert r.status_code == 202, r.text
            await asyncio.gather(read("direct", direct), read("proxy", proxy))
        return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def mode_order(rep: int) -> list[str]:
    shift = (rep - 1) % len(MODES)
    return list(MODES[shift:] + MODES[:shift])


async def bench(args: argparse.Namespace) -> int:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with temp_dir("gp-bench-proxy-") as work:
        templates = work / "templates"
        templates.mkdir()
        (templates / "benchspew.toml").write_text(template_text("benchspew", args.lines, args.lines + 1000))
        (templates / "benchtick.toml").write_text(TICK_TEMPLATE)
        cp = ControlPlane(work / "plane", f"sqlite:///{work}/plane/gameplane.db", poll_interval=5.0,
                          templates_dirs=str(templates),
                          # every replay takes a ticket: more than a person asks for in a minute
                          console_tickets_per_window="100000")
        try:
            cp.start(timeout=60)
            b = Bench(cp, args.lines)
            spew = b.server("spew", "benchspew")
            deadline = time.monotonic() + 60
            while b.console_seq(spew) < args.lines:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workload did not print its lines within 60 s")
                await asyncio.sleep(0.1)
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for rep in range(1, args.reps + 1):
                for mode in mode_order(rep):
                    run = await b.replay(spew, mode, args.batch_passes if "batch" in mode else 1)
                    runs[mode].append(run)
                    print(f"  rep {rep} {mode:<13}: {run['rate']:>9,.0f} lines/s; first line after "
                          f"{run['first'] * 1000:.1f} ms; "
                          f"CPU per line: API {run['api_cpu'] * 1e6:.1f} us, agent "
                          f"{run['agent_cpu'] * 1e6:.1f} us, client {run['client_cpu'] * 1e6:.1f} us; "
                          f"deflate: {run['extensions']}", flush=True)
            tick = b.server("tick", "benchtick")
            windows: dict[str, list[dict[str, float]]] = {"line": [], "batch": []}
            for rep in range(1, args.reps + 1):
                for shape in windows:
                    found = await b.latency(tick, shape, args.latency_lines, args.rate)
                    window = {f"{via}_{q}": pct(found[via], q) for via in found for q in (0.5, 0.99)}
                    windows[shape].append(window)
                    print(f"  latency {rep} {shape:<5}: p50/p99 direct {window['direct_0.5']:.2f}/"
                          f"{window['direct_0.99']:.2f} ms, proxy {window['proxy_0.5']:.2f}/"
                          f"{window['proxy_0.99']:.2f} ms", flush=True)
        except Exception:
            print(f"--- API log tail ---\n{cp.log()[-3000:]}", file=sys.stderr)
            raise
        finally:
            cp.cleanup()

    errors = [e for rs in runs.values() for r in rs for e in r["errors"]]
    for err in errors[:20]:
        print(f"  ERROR: {err}")
    rate = {m: median([r["rate"] for r in rs]) for m, rs in runs.items()}
    ratio = {shape: rate[f"proxy-{shape}"] / rate[f"direct-{shape}"] for shape in ("line", "batch")}
    verdict = {s: "meets" if ratio[s] >= THROUGHPUT_FLOOR else "BELOW" for s in ratio}
    print(f"console_proxy: replay of {args.lines} buffered lines of 60 bytes, median of {args.reps} "
          f"alternating runs; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, "
          f"{os.cpu_count()} CPUs")
    for shape in ("line", "batch"):
        proxy_runs = runs[f"proxy-{shape}"]
        print(f"  {shape:<5}: direct {rate[f'direct-{shape}']:>9,.0f} lines/s, through the API "
              f"{rate[f'proxy-{shape}']:>9,.0f} lines/s, ratio {ratio[shape]:.3f} ({verdict[shape]} the "
              f"{THROUGHPUT_FLOOR} floor); API CPU per line "
              f"{median([r['api_cpu'] for r in proxy_runs]) * 1e6:.1f} us; first line after "
              f"{median([r['first'] for r in runs[f'direct-{shape}']]) * 1000:.1f} ms direct, "
              f"{median([r['first'] for r in proxy_runs]) * 1000:.1f} ms through the API")
    # Per window: p50 and p99 of each reader; then the median over windows, so one
    # scheduling hiccup of this shared box decides no figure alone.
    lat = {shape: {key: median([w[key] for w in ws]) for key in ws[0]} for shape, ws in windows.items()}
    added = {shape: median([w["proxy_0.99"] - w["direct_0.99"] for w in ws]) for shape, ws in windows.items()}
    lat_verdict = {s: "meets" if added[s] < LATENCY_FLOOR_MS else "ABOVE" for s in added}
    for shape, m in lat.items():
        print(f"  latency at {args.rate:,.0f} lines/s, {shape} frames, median of {args.reps} windows of "
              f"{args.latency_lines} lines: direct p50 {m['direct_0.5']:.2f} ms "
              f"p99 {m['direct_0.99']:.2f} ms; "
              f"proxy p50 {m['proxy_0.5']:.2f} ms p99 {m['proxy_0.99']:.2f} ms; added p50 "
              f"{m['proxy_0.5'] - m['direct_0.5']:.2f} ms, p99 {added[shape]:.2f} ms "
              f"({lat_verdict[shape]} the {LATENCY_FLOOR_MS:g} ms floor)")
    elapsed = time.monotonic() - started
    lat_text = "; ".join(
        f"{s} p50/p99 direct {m['direct_0.5']:.1f}/{m['direct_0.99']:.1f} ms, proxy "
        f"{m['proxy_0.5']:.1f}/{m['proxy_0.99']:.1f} ms, added p99 {added[s]:.1f} ms "
        f"({lat_verdict[s]} floor {LATENCY_FLOOR_MS:g})"
        for s, m in lat.items())
    print(f"SUMMARY console_proxy: per-line direct {rate['direct-line']:,.0f} lines/s, proxy "
          f"{rate['proxy-line']:,.0f} (ratio {ratio['line']:.3f}, {verdict['line']} floor "
          f"{THROUGHPUT_FLOOR}); "
          f"batch direct {rate['direct-batch']:,.0f}, proxy {rate['proxy-batch']:,.0f} (ratio "
          f"{ratio['batch']:.3f}, {verdict['batch']} floor {THROUGHPUT_FLOOR}); at {args.rate:,.0f} lines/s "
          f"{lat_text}{'; ERRORS' if errors else ''} ({elapsed:.0f}s)")
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-passes", type=int, default=5,
                        help="replays per batch run: one takes only ~0.1 s, too short to time alone")
    parser.add_argument("--rate", type=float, default=1000.0, help="lines a second for the latency run")
    parser.add_argument("--latency-lines", type=int, default=3000, help="lines per latency window")
    args = parser.parse_args()
    if min(args.lines, args.reps, args.rate, args.latency_lines, args.batch_passes) <= 0:
        parser.error("--lines, --reps, --batch-passes, --rate and --latency-lines must be positive")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
