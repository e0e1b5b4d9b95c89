"""The power state machine of one instance.

Phases: ``stopped → starting → running → stopping → stopped``, and
``crashed`` when the workload ends without being asked to, or never becomes
ready. Every phase change bumps ``seq`` and wakes console readers.

Power actions are serialized: ``begin()`` claims the instance for one
operation (``409 busy`` otherwise) and runs it in the background; ``kill()``
bypasses the claim, because a hung stop must always be breakable.

Method by method:

* ``start``   preflight (binary, ports) before accepting, then spawn, attach
              the console, run the probes until all pass (``running``), the
              process exits (``crashed``) or the timeout passes (killed,
              ``crashed`` with the probe's reason).
* ``stop``    the template's console command, then its signal, then SIGKILL,
              each after its timeout. Ends ``stopped``.
* ``restart`` stop then start under the same claim.
* ``kill``    SIGKILL the whole workload now. Ends ``stopped``.
* an exit nobody asked for: a clean exit code is an in-game stop
  (``stopped``); anything else is ``crashed`` and the restart policy decides
  (at most N restarts in a window, exponential backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from gameplane.agent import cgroups
from gameplane.agent.console import ConsoleBuffer, LineSplitter
from gameplane.agent.console_io import Channel, NoChannel, OutputReader, StdinChannel, TcpChannel
from gameplane.agent.instance import InstanceFiles, read_json, write_json_atomic
from gameplane.agent.probes import ProbeSet
from gameplane.agent.process import RunFiles, Workload
from gameplane.agent.sandbox import Identity, LaunchPlan, bwrap_path, untraversable_ancestor
from gameplane.errors import Conflict, GameplaneError, Unprocessable
from gameplane.net import port_free

log = logging.getLogger(__name__)

Phase = Literal["stopped", "starting", "running", "stopping", "crashed"]
_DISK_TTL = 30.0
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games", "LANG": "C.UTF-8"}


class Supervisor:
    def __init__(self, files: InstanceFiles, use_cgroups: bool | None = None):
        self.files = files
        template = files.template
        self.console = ConsoleBuffer(template.console.buffer_lines, files.paths.console_log)
        self.phase: Phase = "stopped"
        self.reason: str | None = None
        self.since = time.time()
        self.seq = 0
        self.exit_code: int | None = None
        self.restarts = 0
        self._crash_times: deque[float] = deque()
        self.busy: str | None = None
        self.workload: Workload | None = None
        self.probes: ProbeSet | None = None
        self.started_at: float | None = None
        self._expect_exit = False
        # Set by whoever ends the workload on purpose: the phase the exit should produce.
        self._exit_outcome: tuple[Phase, str] | None = None
        self._start_seq = 0
        self._reader: OutputReader | None = None
        self._channel: Channel = NoChannel()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restart_task: asyncio.Task[None] | None = None
        self._use_cgroups = cgroups.available() if use_cgroups is None else use_cgroups
        self.cgroup = cgroups.Cgroup(files.cgroup_name) if self._use_cgroups else None
        self._cpu_sample: tuple[float, int] | None = None
        self._disk: tuple[float, int] | None = None
        self._listeners: list[Callable[[], None]] = []
        # A long operation's progress (backups, restores), shown in /status; kept
        # after it ends so its outcome can be read.
        self.progress: Callable[[], dict[str, Any]] | None = None

    # -- state ----------------------------------------------------------------
    def _set_phase(self, phase: Phase, reason: str | None = None) -> None:
        if phase != self.phase or reason != self.reason:
            log.info("instance %s: %s -> %s (%s)", self.files.id, self.phase, phase, reason)
            self.phase, self.reason, self.since = phase, reason, time.time()
            self.seq += 1
            self._save_state()
            self.console.poke()

    def _save_state(self) -> None:
        w = self.workload
        desired = "running" if self.phase in ("starting", "running") else "stopped"
        write_json_atomic(self.files.paths.state, {
            "phase": self.phase, "reason": self.reason, "desired": desired,
            "pid": w.pid if w and not w.exited else None,
            "startTime": w.start_time if w else None,
            "bwrap": w.bwrap if w else False,
            "startSeq": self._start_seq, "restarts": self.restarts,
        })

    # -- power: claims ----------------------------------------------------------
    def begin(self, operation: str, work: Callable[[], Awaitable[None]], *,
              crash_on_error: bool = True) -> None:
        """Claim the instance for ``operation`` and run ``work`` in the background.

        A failed power action leaves the workload ``crashed``; operations that
        report their own failure (backups) pass ``crash_on_error=False``."""
        if self.busy is not None:
            raise Conflict("busy", {"operation": self.busy})
        self.busy = operation
        self.seq += 1

        async def run() -> None:
            try:
                await work()
            except GameplaneError as exc:
                if not crash_on_error:
                    log.error("instance %s: %s failed: %s", self.files.id, operation, exc)
                    return
                self._set_phase("crashed", f"{operation} failed: {exc.code} {exc.details}")
            except Exception:
                log.exception("instance %s: %s failed", self.files.id, operation)
                if not crash_on_error:
                    return
                self._set_phase("crashed", f"{operation} failed: internal error (see agent log)")
            finally:
                self.busy = None
                self.seq += 1
                self.console.poke()

        self._spawn(run())

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def request_start(self) -> None:
        if self.phase in ("starting", "running", "stopping"):
            raise Conflict("already_running", {"phase": self.phase})
        self.preflight()
        self.begin("start", self._start)

    def request_stop(self) -> None:
        if self.phase in ("stopped", "crashed") and self.workload is None:
            self._cancel_auto_restart()
            if self.phase == "crashed":
                self._set_phase("stopped", "stopped after a crash")
                return
            raise Conflict("not_running", {"phase": self.phase})
        self.begin("stop", self._stop)

    def request_restart(self) -> None:
        if self.workload is None:
            self.preflight()
        self.begin("restart", self._restart)

    async def _restart(self) -> None:
        if self.workload is not None:
            await self._stop()
        self.preflight()
        await self._start()

    # -- under another operation's claim (backups, restores) ---------------------------
    async def stop_claimed(self) -> bool:
        """Stop the workload for the operation holding the claim; True if it was running."""
        if self.workload is None:
            return False
        await self._stop()
        return True

    async def start_claimed(self) -> None:
        self.preflight()
        await self._start()

    def bump(self) -> None:
        """Tell pollers and console readers that ``progress`` changed stage."""
        self.seq += 1
        self.console.poke()

    # -- preflight ----------------------------------------------------------------
    def preflight(self) -> None:
        """Refuse a start that cannot work, with a reason, before accepting it."""
        template = self.files.template
        rendering = self.files.rendering
        binary = rendering.render(template.start.command[0])
        if not (os.path.isabs(binary) and os.access(binary, os.X_OK)) and not shutil.which(
                binary, path=_BASE_ENV["PATH"]):
            raise Unprocessable("binary_not_found", {"command": binary})
        if template.sandbox.bwrap == "required" and not bwrap_path():
            raise Unprocessable("sandbox_unavailable", {"reason": "template requires bubblewrap"})
        identity = Identity.for_instance(template.sandbox.user, self.files.config.uid)
        blocked = untraversable_ancestor(self.files.paths.data, identity)
        if blocked is not None:
            raise Unprocessable("data_dir_unreachable", {
                "path": str(blocked),
                "reason": "the workload's user cannot enter this folder; give it o+x or move the data dir"})
        for name, spec in template.ports.items():
            port = self.files.config.ports[name]
            if not port_free(port, spec.protocol):
                raise Conflict("port_in_use", {"port": name, "number": port, "protocol": spec.protocol})

    # -- start ----------------------------------------------------------------------
    def _launch_plan(self) -> LaunchPlan:
        files, template = self.files, self.files.template
        rendering = files.rendering
        env = dict(_BASE_ENV)
        env["HOME"] = str(files.paths.data)
        env.update({k: rendering.render(v) for k, v in template.start.env.items()})
        use_bwrap = self._bwrap_wanted()
        procs: list[Any] = []
        if self.cgroup is not None:
            self.cgroup.create(template.limits)
            procs = self.cgroup.procs_files
        return LaunchPlan(
            argv=[rendering.render(a) for a in template.start.command],
            env=env,
            workdir=rendering.render(template.start.workdir),
            data_dir=files.paths.data,
            identity=Identity.for_instance(template.sandbox.user, files.config.uid),
            limits=template.limits,
            use_bwrap=use_bwrap,
            status_path=RunFiles(files.paths.run).status,
            cgroup_procs=procs,
        )

    def _bwrap_wanted(self) -> bool:
        return self.files.template.sandbox.bwrap != "off" and bwrap_path() is not None

    async def _start(self) -> None:
        template = self.files.template
        if not self.files.installed:
            await asyncio.to_thread(self.files.install)
        self._cancel_auto_restart()
        self._expect_exit = False
        self._exit_outcome = None
        self.exit_code = None
        self._start_seq = self.console.last_seq
        self.workload = Workload.spawn(self._launch_plan(), RunFiles(self.files.paths.run))
        self.started_at = time.time()
        self._set_phase("starting")
        self._attach(self.workload)
        await self._await_ready(template.ready.timeout)

    async def _await_ready(self, timeout: float) -> None:
        workload, probes = self.workload, self.probes
        assert workload is not None and probes is not None
        net = self._spawn(probes.run_network())
        ready = self._spawn(probes.done.wait())
        exited = self._spawn(workload.wait())
        try:
            await asyncio.wait({ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (net, ready, exited):
                task.cancel()
        if workload.exited or self.workload is not workload:
            return  # the exit monitor has set the phase
        if probes.passed:
            self._set_phase("running")
            return
        await self._terminate(workload, graceful=True, outcome=("crashed", probes.failing_reason()))

    def _attach(self, workload: Workload) -> None:
        """Connect console, probes and exit monitor to a spawned or re-found workload."""
        template = self.files.template
        self.probes = ProbeSet(template.ready, self.files.rendering)
        probes = self.probes

        def emit(lines: list[str]) -> None:
            self.console.extend(lines)
            probes.feed_lines(lines)

        splitter = LineSplitter(emit, template.console.prompt)
        run = RunFiles(self.files.paths.run)
        self._reader = OutputReader(run.stdout, splitter)
        console = template.console
        if console.type == "stdin":
            self._channel = StdinChannel(run.stdin)
        elif console.type == "tcp":
            assert console.port
            password = self.files.rendering.render(console.password) if console.password else None
            # Its own splitter: a TCP stream's partial lines must not join stdout's.
            self._channel = TcpChannel(self.files.config.ports[console.port], LineSplitter(emit),
                                       password, console.password_prompt)
        else:
            self._channel = NoChannel()
        self._spawn(self._monitor(workload, self._reader))

    # -- exit -------------------------------------------------------------------------
    async def _monitor(self, workload: Workload, reader: OutputReader) -> None:
        """Record a workload's exit. Every await comes before the workload is
        released: a restart waiting for the release must find the exit fully
        recorded, or this would judge the old exit by the new start's flags."""
        code = await workload.wait()
        # Let the last lines ("Goodbye.") land before the phase says the server is gone.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader.closed), 2)
        reader.close()
        self._channel.close()
        self._channel = NoChannel()
        if self.cgroup is not None:
            await self._destroy_cgroup(self.cgroup)
        # From here on, no await until the phase is recorded.
        if self.workload is workload:
            self.workload = None
        self.exit_code = code
        described = describe_exit(code)
        template = self.files.template
        if self._expect_exit:
            phase, reason = self._exit_outcome or ("stopped", f"stopped ({described})")
            self._set_phase(phase, reason)
            return
        if self.phase == "starting":
            self._set_phase("crashed", f"{described} before it was ready")
            return
        clean = code is not None and code in template.restart.clean_exit_codes
        if clean and template.restart.policy != "always":
            self._set_phase("stopped", f"the server stopped by itself ({described})")
            return
        self._set_phase("crashed", described)
        self._schedule_restart(described)

    @staticmethod
    async def _destroy_cgroup(cgroup: cgroups.Cgroup) -> None:
        # The last processes of a sandbox may still be exiting when the server's pid is reaped.
        for _ in range(50):
            if cgroup.destroy():
                return
            await asyncio.sleep(0.02)

    def _schedule_restart(self, described: str) -> None:
        policy = self.files.template.restart
        if policy.policy == "never":
            return
        now = time.time()
        while self._crash_times and self._crash_times[0] < now - policy.window:
            self._crash_times.popleft()
        if len(self._crash_times) >= policy.max_restarts:
            self._set_phase("crashed", f"{described}; {len(self._crash_times)} restarts within "
                                       f"{policy.window:g}s, giving up")
            return
        delay = min(policy.backoff * (2 ** len(self._crash_times)), policy.backoff_max)
        self._crash_times.append(now)
        self._set_phase("crashed", f"{described}; restarting in {delay:g}s "
                                   f"(attempt {len(self._crash_times)}/{policy.max_restarts})")
        self._restart_task = asyncio.ensure_future(self._auto_restart(delay))

    async def _auto_restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._restart_task = None
        if self.phase != "crashed" or self.busy is not None:
            return
        try:
            self.preflight()
        except GameplaneError as exc:
            self._set_phase("crashed", f"restart refused: {exc.code} {exc.details}")
            return
        self.restarts += 1
        self.begin("start", self._start)

    def _cancel_auto_restart(self) -> None:
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None

    # -- stop ---------------------------------------------------------------------------
    async def _stop(self) -> None:
        self._cancel_auto_restart()
        workload = self.workload
        if workload is None:
            self._set_phase("stopped", self.reason)
            return
        self._set_phase("stopping")
        await self._terminate(workload, graceful=True)

    async def _terminate(self, workload: Workload, graceful: bool,
                         outcome: tuple[Phase, str] | None = None) -> None:
        """End ``workload`` (see the stop sequence in the module doc) and return
        once the exit monitor has recorded the resulting phase."""
        self._expect_exit = True
        self._exit_outcome = outcome
        await self._end(workload, graceful)
        await workload.wait()
        # The monitor drains the last output before it records the exit; wait for it.
        for _ in range(500):
            if self.workload is not workload:
                break
            await asyncio.sleep(0.01)

    async def _end(self, workload: Workload, graceful: bool) -> None:
        stop = self.files.template.stop
        if graceful and stop.command and not workload.exited:
            with contextlib.suppress(GameplaneError):
                for command in stop.command:
                    await self._channel.send(self.files.rendering.render(command))
                if await _exits_within(workload, stop.timeout):
                    return
        if graceful and not workload.exited:
            await workload.resolve_server_pid()
            workload.send_signal(signal.Signals[stop.signal])
            if await _exits_within(workload, stop.kill_timeout):
                return
        workload.kill(self.cgroup.pids() if self.cgroup else None)

    def kill(self) -> None:
        """SIGKILL now, whatever operation holds the instance."""
        self._cancel_auto_restart()
        workload = self.workload
        if workload is None:
            raise Conflict("not_running", {"phase": self.phase})
        self._expect_exit = True
        self._exit_outcome = None
        workload.kill(self.cgroup.pids() if self.cgroup else None)

    # -- console ---------------------------------------------------------------------
    async def send_command(self, command: str) -> int:
        if self.files.template.console.type == "none":
            raise Conflict("no_console", {"reason": "this template has no console"})
        if self.phase not in ("starting", "running") or self.workload is None:
            raise Conflict("not_running", {"phase": self.phase})
        await self._channel.send(command)
        return self.console.last_seq

    # -- recovery --------------------------------------------------------------------------
    async def recover(self) -> None:
        """Find a workload a previous agent left running, or start one the
        operator wanted running (e.g. after a host reboot)."""
        state = read_json(self.files.paths.state)
        self.restarts = int(state.get("restarts") or 0)
        pid, start_time = state.get("pid"), state.get("startTime")
        workload = None
        if isinstance(pid, int) and isinstance(start_time, int):
            run = RunFiles(self.files.paths.run)
            workload = Workload.find(pid, start_time, run, bool(state.get("bwrap")))
        if workload is not None:
            self.workload = workload
            self._start_seq = int(state.get("startSeq") or 0)
            self._attach(workload)
            phase = state.get("phase")
            if phase == "running":
                self._set_phase("running", "found running after an agent restart")
            elif phase == "stopping":
                self._set_phase("stopping", "found stopping after an agent restart")
                self.begin("stop", self._stop)
            else:
                self._set_phase("starting", "found starting after an agent restart")
                assert self.probes is not None
                _, _, lines = self.console.read_after(self._start_seq, limit=10**9)
                self.probes.feed_lines(lines)
                self.begin("start", lambda: self._await_ready(self.files.template.ready.timeout))
            return
        phase = state.get("phase")
        if phase in ("crashed", "stopped"):
            self._set_phase(phase, state.get("reason"))
        elif state.get("desired") == "running":
            self._set_phase("crashed", "the server was not running when the agent started")
            try:
                self.preflight()
            except GameplaneError as exc:
                self._set_phase("crashed", f"not restarted: {exc.code} {exc.details}")
                return
            self.begin("start", self._start)

    async def shutdown(self) -> None:
        """Detach from the workload (which keeps running); safe to call twice."""
        self._cancel_auto_restart()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reader is not None:
            self._reader.close()
        self._channel.close()
        self.console.close()

    # -- status ------------------------------------------------------------------------------
    def resources(self) -> dict[str, Any]:
        now = time.monotonic()
        memory = cpu_ns = processes = None
        usage = self.cgroup.usage() if self.cgroup is not None and self.workload else None
        if usage is not None:
            memory, cpu_ns, processes = usage.memory_bytes, usage.cpu_ns, usage.processes
        elif self.workload is not None:
            memory, cpu_ns, processes = _process_tree_usage(self.workload.pid)
        cpu_percent = 0.0
        if cpu_ns is not None:
            if self._cpu_sample is not None and now > self._cpu_sample[0]:
                elapsed = now - self._cpu_sample[0]
                cpu_percent = max(0.0, (cpu_ns - self._cpu_sample[1]) / 1e9 / elapsed * 100)
            self._cpu_sample = (now, cpu_ns)
        return {"cpuPercent": round(cpu_percent, 2), "memoryBytes": memory or 0,
                "processes": processes or 0, "diskBytes": self._disk_bytes(now)}

    def _disk_bytes(self, now: float) -> int:
        # Walking a large world on every /status would be the poller's biggest cost.
        if self._disk is None or now - self._disk[0] > _DISK_TTL:
            self._disk = (now, self.files.data_bytes())
        return self._disk[1]

    def status(self) -> dict[str, Any]:
        w = self.workload
        return {
            "instanceId": self.files.id,
            "template": self.files.template.name,
            "kind": self.files.template.template.kind,
            "phase": self.phase,
            "reason": self.reason,
            "since": self.since,
            "seq": self.seq,
            "busy": self.busy,
            "pid": w.server_pid() if w else None,
            "exitCode": self.exit_code,
            "restarts": self.restarts,
            "startedAt": self.started_at if w else None,
            "consoleSeq": self.console.last_seq,
            "probes": {k: v.to_json() for k, v in (self.probes.results.items() if self.probes else [])},
            "ports": self.files.config.ports,
            "resources": self.resources(),
            "sandbox": {"bwrap": w.bwrap if w else self._bwrap_wanted(),
                        "cgroups": self.cgroup is not None,
                        "uid": self.files.config.uid},
            "progress": self.progress() if self.progress else None,
        }


async def _exits_within(workload: Workload, seconds: float) -> bool:
    try:
        await asyncio.wait_for(workload.wait(), seconds)
    except TimeoutError:
        return False
    return True


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (exit code unknown: started by a previous agent without bubblewrap)"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        # bwrap and shells report death by signal N as exit code 128+N.
        return f"killed by {signal.Signals(code - 128).name} (exit code {code})"
    return f"exited with code {code}"


def _process_tree_usage(pid: int) -> tuple[int | None, int | None, int | None]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        memory = sum(p.memory_info().rss for p in procs)
        times = [p.cpu_times() for p in procs]
        cpu = int(sum(t.user + t.system for t in times) * 1e9)
    except psutil.Error:
        return None, None, None
    return memory, cpu, len(procs)
