"""Console throughput: lines/s from a workload that writes as fast as it can,
through the agent's console websocket in both frame shapes, against reading
the same command's stdout directly.

The workload is ``python3 -c`` printing N numbered lines of 60 bytes, noting
the time it finished writing in a file, then sleeping. Three measurements
alternate (the order rotates from one repetition to the next), ``--reps``
times each, and medians are reported:

* direct (baseline): the command as a plain subprocess, stdout=PIPE, read
  line by line with asyncio's ``StreamReader.readline()`` and decoded;
* agent, per-line frames (the contract's default): a node-agent instance
  whose template sets ``console.buffer_lines`` above N, so a slow reader
  should lose nothing; a websocket ``/console/ws?since=0`` is opened first,
  then ``POST /start``, and the clock runs until line N arrives, one
  ``{"type":"output","seq":N,"line":...}`` frame per line;
* agent, batch frames: the same with ``/console/ws?since=0&batch=1``, where
  the agent sends ``{"type":"output","seq":<first>,"lines":[...]}`` frames of
  consecutive lines (up to 256 a frame).

Times run from spawn (direct) or ``POST /start`` (agent) to the arrival of
line N. The ratios are per-line / direct and batch / direct; the issue's
floor is 0.5. Both frame shapes are checked: sequence continuity (frames,
batches and ``gap`` frames must follow each other without holes or
overlaps), the frame layout, and the content of the first line of every
batch and of every 10,000th and the last line.

Side figures, to show where time goes: gaps and lost lines (none expected
with the big buffer); the latency of ``GET /health`` (polled every 10 ms by a
separate process) while the agent streams, i.e. how long the agent's event
loop is blocked; when the workload finished writing (a workload the console
slows down finishes late); the CPU seconds of agent and client; in the first
repetition, the agent's ingest rate with no websocket client (``GET /status``
consoleSeq reaching N) and a replay of the N buffered lines to a new websocket
in each frame shape; and (unless ``--no-small``) one run per frame shape with
the default 10,000-line buffer, counting the lines a reader that falls behind
loses (``gap`` frames).

The client offers permessage-deflate as a browser does; the agent declines it
(deflate is off in the agent), and the negotiated extensions are printed.
``--profile`` records one more agent run per frame shape with py-spy
(``.venv/bin/pip install py-spy``) and prints the hot spots.

Run: ``.venv/bin/python bench/console_throughput.py [--lines 200000] [--reps 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Agent, check_python, cpu_seconds, median, temp_dir

check_python()

import httpx  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

NODE_TOKEN = "bench-node-token"
INSTANCE_TOKEN = "bench-instance-token"
AUTH = {"Authorization": f"Bearer {INSTANCE_TOKEN}"}
PYTHON = "/usr/bin/python3"
DONE_FILE = "producer-done"
FLOOR = 0.5  # the floor for agent / direct
# 14 + 45 characters + newline = 60 bytes a line. It runs in its data dir (agent)
# or a scratch dir (direct) and notes when it finished writing.
PRODUCER = """\
import sys, time
n = int(sys.argv[1])
w = sys.stdout.write
pad = "x" * 45
for i in range(1, n + 1):
    w("line %08d " % i + pad + "\\n")
sys.stdout.flush()
with open("producer-done", "w") as fh:
    fh.write(repr(time.time()))
time.sleep(3600)
"""
# A separate process polls GET /health every 10 ms until its stop file exists
# (or 150 s have passed, so it never outlives a failed benchmark).
HEALTH_POLLER = """\
import http.client, json, os, sys, time
port, stop = int(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
lat = []
deadline = time.monotonic() + 150
while not os.path.exists(stop) and time.monotonic() < deadline:
    t = time.perf_counter()
    conn.request("GET", "/health")
    conn.getresponse().read()
    lat.append(time.perf_counter() - t)
    time.sleep(0.01)
print(json.dumps(sorted(lat)))
"""


def template_text(name: str, lines: int, buffer_lines: int | None) -> str:
    buffer = f"buffer_lines = {buffer_lines}\n" if buffer_lines else ""
    return f"""\
[template]
name = "{name}"
description = "gameplane console throughput benchmark workload"

[start]
command = ["{PYTHON}", "-c", '''{PRODUCER}''', "{lines}"]

[stop]
signal = "SIGTERM"
timeout = 5
kill_timeout = 5

[console]
type = "stdin"
{buffer}
[restart]
policy = "never"
"""


def expected_line(seq: int) -> str:
    return f"line {seq:08d} " + "x" * 45


def read_done(path: Path, t0_wall: float) -> float | None:
    """Seconds from t0 until the producer finished writing, if it did."""
    try:
        return float(path.read_text()) - t0_wall
    except (OSError, ValueError):
        return None


MODES = ("line", "batch")
MODE_NAMES = {"direct": "direct", "line": "agent, per-line frames", "batch": "agent, batch=1"}
MAX_ERRORS = 20


@dataclass
class Run:
    kind: str  # "direct", "line", "batch" or "ingest"
    seconds: float  # start/spawn -> line N
    stream_seconds: float  # first line -> line N
    received: int
    lost: int = 0
    gaps: int = 0
    agent_cpu: float = 0.0
    client_cpu: float = 0.0
    producer_done: float | None = None
    frames: int = 0  # output frames received
    extensions: str = ""  # Sec-WebSocket-Extensions the agent answered
    health: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def rate(self, lines: int) -> float:
        return lines / self.seconds

    def describe(self, lines: int) -> str:
        done = f"{self.producer_done * 1000:.0f} ms" if self.producer_done is not None else "?"
        text = (f"{self.rate(lines):>9,.0f} lines/s ({self.seconds * 1000:6.0f} ms to line {lines}; "
                f"workload done writing at {done}")
        if self.kind == "direct":
            return text + f"; reader cpu {self.client_cpu:.2f}s)"
        if self.received:
            text += f"; received {self.received}, lost {self.lost} in {self.gaps} gaps"
        if self.kind == "batch" and self.frames:
            text += f"; {self.frames} frames, {self.received / self.frames:.0f} lines/frame"
        text += f"; cpu agent {self.agent_cpu:.2f}s client {self.client_cpu:.2f}s"
        if self.health:
            text += f"; /health max {max(self.health) * 1000:.0f} ms"
        return text + ")"


class HealthPoller:
    """GET /health every 10 ms from another process; latencies when stopped."""

    def __init__(self, port: int, work: Path):
        self._stop = work / f"poller-stop-{time.monotonic_ns()}"
        self._proc = subprocess.Popen([sys.executable, "-c", HEALTH_POLLER, str(port), str(self._stop)],
                                      stdout=subprocess.PIPE)

    def stop(self) -> list[float]:
        if self._proc.returncode is not None:
            return []
        self._stop.touch()
        try:
            out, _ = self._proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return []
        self._stop.unlink(missing_ok=True)
        return [float(v) for v in json.loads(out or b"[]")]


# -- baseline ---------------------------------------------------------------------------
async def run_direct(lines: int, scratch: Path) -> Run:
    scratch.mkdir(exist_ok=True)
    (scratch / DONE_FILE).unlink(missing_ok=True)
    cpu0 = time.process_time()
    t0_wall, t0 = time.time(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-c", PRODUCER, str(lines), stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, cwd=scratch, limit=1 << 20)
    assert proc.stdout is not None
    count = 0
    t_first = 0.0
    last = ""
    try:
        # One timeout around the loop: a wait_for() per line would cost more than the read.
        async with asyncio.timeout(60):
            while count < lines:
                raw = await proc.stdout.readline()
                if not raw:
                    break
                last = raw.decode("utf-8", "replace").rstrip("\n")
                count += 1
                if count == 1:
                    t_first = time.perf_counter()
        t_end = time.perf_counter()
        cpu = time.process_time() - cpu0
        for _ in range(100):  # the done file is written right after the last line
            if (scratch / DONE_FILE).exists():
                break
            await asyncio.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    run = Run("direct", t_end - t0, t_end - t_first, count, client_cpu=cpu,
              producer_done=read_done(scratch / DONE_FILE, t0_wall))
    if count != lines or last != expected_line(lines):
        run.errors.append(f"direct read {count} lines, last {last!r}")
    return run


# -- through the agent -------------------------------------------------------------------
class Receiver:
    """Counts output lines up to line ``lines``, following gap frames, for one
    frame shape: per-line frames (``batch=False``) or batch frames."""

    PREFIX = '{"type":"output","seq":'
    LINE_KEY = ',"line":"'
    LINES_KEY = ',"lines":['

    def __init__(self, lines: int, batch: bool):
        self.lines = lines
        self.batch = batch
        self.count = self.lost = self.gaps = self.frames = self.last_seq = 0
        self.t_first = 0.0
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    def check(self, seq: int, line: str) -> None:
        if line != expected_line(seq):
            self.error(f"line {seq} is {line!r}")

    async def run(self, ws: ClientConnection) -> None:
        prefix, cut = self.PREFIX, len(self.PREFIX)
        key = self.LINES_KEY if self.batch else self.LINE_KEY
        key_len = len(key)
        while self.last_seq < self.lines:
            text = await ws.recv()
            assert isinstance(text, str)
            if text.startswith(prefix):
                # Cheap parse of the agent's fixed frame layout; the content is spot-checked.
                comma = text.index(",", cut)
                seq = int(text[cut:comma])
                if self.frames == 0:
                    self.t_first = time.perf_counter()
                self.frames += 1
                if seq != self.last_seq + 1:
                    self.error(f"seq {seq} after {self.last_seq} without a gap frame")
                if text[comma:comma + key_len] != key:
                    self.error(f"frame at seq {seq} is not a {'batch' if self.batch else 'per-line'} "
                               f"frame: {text[:80]!r}")
                    self.last_seq = seq
                    continue
                if not self.batch:
                    self.count += 1
                    self.last_seq = seq
                    if seq % 10_000 == 0 or seq == self.lines:
                        self.check(seq, json.loads(text)["line"])
                    continue
                batch = json.loads(text)["lines"]
                if not batch:
                    self.error(f"empty batch frame at seq {seq}")
                    continue
                last = seq + len(batch) - 1
                self.count += len(batch)
                self.last_seq = last
                self.check(seq, batch[0])
                for s in range(-(-seq // 10_000) * 10_000, last + 1, 10_000):
                    self.check(s, batch[s - seq])
                if seq <= self.lines <= last:
                    self.check(self.lines, batch[self.lines - seq])
                continue
            frame = json.loads(text)
            if frame.get("type") == "gap":
                self.gaps += 1
                self.lost += frame["to"] - frame["from"] + 1
                if frame["from"] != self.last_seq + 1:
                    self.error(f"gap from {frame['from']} after {self.last_seq}")
                self.last_seq = frame["to"]
            elif frame.get("type") == "status" and frame.get("phase") == "crashed":
                raise RuntimeError(f"workload crashed: {frame.get('reason')}")
        if self.last_seq != self.lines:
            self.error(f"stream ended at seq {self.last_seq}, past line {self.lines}")


class AgentBench:
    def __init__(self, agent: Agent, http: httpx.AsyncClient, lines: int, work: Path):
        self.agent = agent
        self.http = http
        self.lines = lines
        self.work = work

    async def create(self, instance: str, template: Path) -> None:
        r = await self.http.post("/instances", json={"id": instance, "template": str(template),
                                                     "tokenHash": INSTANCE_TOKEN},
                                 headers=self.agent.headers)
        if r.status_code != 201:
            raise RuntimeError(f"POST /instances -> {r.status_code} {r.text}")

    async def start(self, instance: str) -> None:
        r = await self.http.post(f"/i/{instance}/start", headers=AUTH)
        if r.status_code != 202:
            raise RuntimeError(f"POST /start -> {r.status_code} {r.text}")

    async def remove(self, instance: str) -> None:
        base = f"/i/{instance}"
        await self.http.post(f"{base}/kill", headers=AUTH)
        for _ in range(200):
            status = (await self.http.get(f"{base}/status", headers=AUTH)).json()
            if status["phase"] in ("stopped", "crashed") and status["busy"] is None:
                break
            await asyncio.sleep(0.05)
        await self.http.delete(f"/instances/{instance}", headers=self.agent.headers)

    def done_file(self, instance: str) -> Path:
        return self.agent.data_dir / "instances" / instance / "data" / DONE_FILE

    def connect(self, instance: str, mode: str) -> connect:
        query = "since=0&batch=1" if mode == "batch" else "since=0"
        # websockets offers permessage-deflate by default, like a browser; the agent declines.
        return connect(f"{self.agent.ws_url}/i/{instance}/console/ws?{query}",
                       additional_headers=AUTH, max_size=None)

    async def receive(self, ws: ClientConnection, mode: str, poller: HealthPoller | None,
                      t0: float, cpu0: tuple[float, float]) -> Run:
        rx = Receiver(self.lines, batch=mode == "batch")
        # One timeout around the loop: a wait_for() per frame would cost more than the frame.
        async with asyncio.timeout(90):
            await rx.run(ws)
        t_end = time.perf_counter()
        agent_cpu = cpu_seconds(self.agent.pid) - cpu0[0]
        client_cpu = time.process_time() - cpu0[1]
        health = poller.stop() if poller else []
        errors = rx.errors
        if rx.count + rx.lost != self.lines:
            errors.append(f"received {rx.count} + lost {rx.lost} != {self.lines}")
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else ""
        return Run(mode, t_end - t0, t_end - rx.t_first, rx.count, rx.lost, rx.gaps,
                   agent_cpu, client_cpu, frames=rx.frames, extensions=extensions,
                   health=health, errors=errors)

    async def live(self, instance: str, template: Path, mode: str, replay: bool = False,
                   profile_out: Path | None = None) -> tuple[Run, Run | None]:
        """Websocket first, then start; optionally replay everything to a second socket."""
        await self.create(instance, template)
        spy = None
        replayed = None
        poller: HealthPoller | None = None
        try:
            async with self.connect(instance, mode) as ws:
                if profile_out is not None:
                    spy = start_py_spy(self.agent.pid, profile_out)
                poller = HealthPoller(self.agent.port, self.work)
                await asyncio.sleep(0.2)
                cpu0 = (cpu_seconds(self.agent.pid), time.process_time())
                t0_wall, t0 = time.time(), time.perf_counter()
                await self.start(instance)
                run = await self.receive(ws, mode, poller, t0, cpu0)
                run.producer_done = read_done(self.done_file(instance), t0_wall)
            if replay:
                poller = HealthPoller(self.agent.port, self.work)
                await asyncio.sleep(0.2)
                cpu0 = (cpu_seconds(self.agent.pid), time.process_time())
                t0 = time.perf_counter()
                async with self.connect(instance, mode) as ws:
                    replayed = await self.receive(ws, mode, poller, t0, cpu0)
        finally:
            if poller is not None:
                poller.stop()
            if spy is not None:
                stop_py_spy(spy)
            await self.remove(instance)
        return run, replayed

    async def ingest_only(self, instance: str, template: Path) -> Run:
        """No websocket: start, then poll GET /status until consoleSeq reaches N."""
        await self.create(instance, template)
        try:
            cpu0 = cpu_seconds(self.agent.pid)
            t0_wall, t0 = time.time(), time.perf_counter()
            await self.start(instance)
            async with asyncio.timeout(60):
                while True:
                    status = (await self.http.get(f"/i/{instance}/status", headers=AUTH)).json()
                    if status["consoleSeq"] >= self.lines:
                        break
                    await asyncio.sleep(0.005)
            t_end = time.perf_counter()
            return Run("ingest", t_end - t0, t_end - t0, 0, agent_cpu=cpu_seconds(self.agent.pid) - cpu0,
                       producer_done=read_done(self.done_file(instance), t0_wall))
        finally:
            await self.remove(instance)


# -- profiling -------------------------------------------------------------------------------
def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        print("  (--profile: py-spy not found; install it with .venv/bin/pip install py-spy)")
        return None
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                             "--function", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it attach
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize_profile(path: Path, label: str, top: int = 15) -> None:
    """Self time and inclusive time per function from py-spy's collapsed stacks."""
    if not path.exists():
        print("  (no profile written)")
        return
    total = 0
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for raw in path.read_text().splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [shorten(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        print("  (empty profile)")
        return
    print(f"  py-spy profile of the agent during one {label} run ({total} samples, idle excluded):")
    print("    self%  function")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * count / total:5.1f}  {name}")
    print("    incl%  function (inclusive; gameplane, uvicorn, starlette, websockets frames)")
    keep = ("app.py", "console", "uvicorn", "websockets", "starlette", "_exception_handler")
    ranked = [(k, v) for k, v in inclusive.items() if any(s in k for s in keep)]
    for name, count in sorted(ranked, key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * count / total:5.1f}  {name}")


def shorten(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.rstrip(')'))})" if where else name


# -- main ----------------------------------------------------------------------------------
def health_text(latencies: list[float]) -> str:
    if not latencies:
        return "n/a"
    lat = sorted(latencies)
    return (f"p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} ms, "
            f"max {lat[-1] * 1000:.0f} ms over {len(lat)} requests")


def mode_order(rep: int) -> list[str]:
    """direct, line, batch in rep 1; then rotated, so no mode always runs first."""
    order = ["direct", *MODES]
    shift = (rep - 1) % len(order)
    return order[shift:] + order[:shift]


async def bench(args: argparse.Namespace) -> int:
    lines = args.lines
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    runs: dict[str, list[Run]] = {"direct": [], **{m: [] for m in MODES}}
    small: dict[str, Run] = {}
    replay: dict[str, Run] = {}
    ingest: Run | None = None
    with temp_dir("gp-bench-console-") as work:
        big_template = work / "spew-big.toml"
        big_template.write_text(template_text("benchspew", lines, max(lines + 1000, 100)))
        small_template = work / "spew-default.toml"
        small_template.write_text(template_text("benchspew", lines, None))
        agent = Agent(work, "node", NODE_TOKEN, node=True)
        agent.start()
        try:
            async with httpx.AsyncClient(base_url=agent.url, timeout=60) as http:
                ab = AgentBench(agent, http, lines, work)
                for rep in range(1, args.reps + 1):
                    for mode in mode_order(rep):
                        if mode == "direct":
                            run = await run_direct(lines, work / "direct")
                        else:
                            run, replayed = await ab.live(f"{mode}-{rep}", big_template, mode,
                                                          replay=rep == 1)
                            if replayed is not None:
                                replay[mode] = replayed
                        runs[mode].append(run)
                        print(f"  rep {rep} {MODE_NAMES[mode]:<22}: {run.describe(lines)}", flush=True)
                # Side figures, once each (they are not part of the ratios).
                for mode in MODES:
                    if mode in replay:
                        print(f"  {'replay, ' + mode:<28}: {replay[mode].describe(lines)}", flush=True)
                if not args.no_small:
                    for mode in MODES:
                        small[mode] = (await ab.live(f"small-{mode}", small_template, mode))[0]
                        print(f"  {'10k buffer, ' + mode:<28}: {small[mode].describe(lines)}", flush=True)
                ingest = await ab.ingest_only("ingest", big_template)
                print(f"  {'agent, no websocket':<28}: {ingest.describe(lines)}", flush=True)
                if args.profile:
                    for mode in MODES:
                        out = work / f"profile-{mode}.txt"
                        run, _ = await ab.live(f"profiled-{mode}", big_template, mode, profile_out=out)
                        print(f"  profiled {MODE_NAMES[mode]} run: {run.describe(lines)}")
                        summarize_profile(out, MODE_NAMES[mode])
        except Exception:
            print(f"--- agent log tail ---\n{agent.log_tail()}", file=sys.stderr)
            raise
        finally:
            agent.stop()

    every = [r for rs in runs.values() for r in rs] + list(small.values()) + list(replay.values())
    errors = [e for r in every for e in r.errors]
    for err in errors:
        print(f"  ERROR: {err}")
    rate = {mode: median([r.rate(lines) for r in rs]) for mode, rs in runs.items()}
    ratio = {mode: rate[mode] / rate["direct"] for mode in MODES}
    verdict = {mode: "meets" if ratio[mode] >= FLOOR else "BELOW" for mode in MODES}
    extensions = sorted({r.extensions or "none" for r in every if r.kind in MODES})
    print(f"console_throughput: {lines} lines of 60 bytes, median of {args.reps} alternating runs; "
          f"websocket extensions negotiated: {', '.join(extensions)}; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after, {os.cpu_count()} CPUs")
    print(f"  (a) {'direct (baseline)':<22}: {rate['direct']:>9,.0f} lines/s")
    for tag, mode in (("b", "line"), ("c", "batch")):
        rs = runs[mode]
        done = [r.producer_done for r in rs if r.producer_done is not None]
        frames = sum(r.frames for r in rs)
        per_frame = f", {sum(r.received for r in rs) / frames:.0f} lines/frame" if mode == "batch" else ""
        print(f"  ({tag}) {MODE_NAMES[mode]:<22}: {rate[mode]:>9,.0f} lines/s, ratio ({tag})/(a) "
              f"{ratio[mode]:.3f} ({verdict[mode]} the {FLOOR} floor)")
        print(f"      big buffer: gaps {sum(r.gaps for r in rs)}, lost {sum(r.lost for r in rs)}"
              f"{per_frame}; workload done writing after "
              f"{median(done) * 1000 if done else float('nan'):.0f} ms (median)")
        print(f"      agent CPU per line {median([r.agent_cpu for r in rs]) / lines * 1e6:.1f} us, "
              f"websocket client {median([r.client_cpu for r in rs]) / lines * 1e6:.1f} us")
        print(f"      /health while streaming: {health_text([x for r in rs for x in r.health])}")
        if mode in replay:
            print(f"      replay of {lines} buffered lines: {replay[mode].rate(lines):,.0f} lines/s; "
                  f"/health during it: {health_text(replay[mode].health)}")
        if mode in small:
            lost = small[mode].lost
            print(f"      10k buffer: {small[mode].rate(lines):,.0f} lines/s to line {lines}, "
                  f"{lost} lines lost in {small[mode].gaps} gap frames ({100 * lost / lines:.1f}%)")
    if ingest is not None:
        print(f"  {'agent, no websocket':<26}: {ingest.rate(lines):>9,.0f} lines/s ingested "
              f"(ratio {ingest.rate(lines) / rate['direct']:.3f} of direct; agent CPU per line "
              f"{ingest.agent_cpu / lines * 1e6:.1f} us)")
    elapsed = time.monotonic() - started

    def worst(mode: str) -> float:
        rs = runs[mode] + ([replay[mode]] if mode in replay else [])
        return max((x for r in rs for x in r.health), default=0.0) * 1000

    small_part = "".join(f"; 10k buffer {m} lost {small[m].lost}/{lines} in {small[m].gaps} gaps"
                         for m in MODES if m in small)
    print(f"SUMMARY console_throughput: direct {rate['direct']:,.0f} lines/s; per-line "
          f"{rate['line']:,.0f} lines/s, ratio (b)/(a) {ratio['line']:.3f} ({verdict['line']} floor "
          f"{FLOOR}); batch=1 {rate['batch']:,.0f} lines/s, ratio (c)/(a) {ratio['batch']:.3f} "
          f"({verdict['batch']} floor {FLOOR}); big-buffer gaps per-line "
          f"{sum(r.gaps for r in runs['line'])}, batch {sum(r.gaps for r in runs['batch'])}"
          f"{small_part}; /health stalled up to {worst('line'):.0f} ms per-line, "
          f"{worst('batch'):.0f} ms batch{'; ERRORS' if errors else ''} ({elapsed:.0f}s)")
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-small", action="store_true",
                        help="skip the default-buffer (10k) runs")
    parser.add_argument("--profile", action="store_true",
                        help="also record one agent run per frame shape with py-spy and print the hot spots")
    args = parser.parse_args()
    if args.lines < 1 or args.reps < 1:
        parser.error("--lines and --reps must be at least 1")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
