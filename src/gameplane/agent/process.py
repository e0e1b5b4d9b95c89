"""One running workload: spawn it, find it again after an agent restart, signal
it and learn when and how it ended.

The workload must outlive the agent (an agent upgrade must not take the game
down), so it runs in its own session, and its console goes through two FIFOs in
the instance's run dir rather than anonymous pipes:

* ``stdin.fifo`` and ``stdout.fifo`` are handed to the workload opened
  read-write, so the workload itself always holds both ends: it never sees EOF
  on stdin nor SIGPIPE on stdout while the agent is away; a restarted agent
  reopens them by path and reads on from where the pipe is.
* Exit is watched with a pidfd, which works for a child and for a process the
  agent only found again. A child's exit code comes from ``waitpid``; with
  bubblewrap, bwrap also writes it to ``status.json``, which is how a
  restarted agent learns the exit code of a workload it did not spawn.

Which pid gets signals: without bwrap, the launcher ``exec``s into the server,
so it is the spawned pid. With ``--unshare-pid`` bwrap forks an init (the
``child-pid`` in ``status.json``) which forks the server; bwrap forwards no
signals, so graceful signals go to the init's child, and SIGKILL to the init,
which takes the whole pid namespace with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gameplane.agent.sandbox import LaunchPlan

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (guards against pid reuse), or
    None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


@dataclass
class RunFiles:
    run_dir: Path

    @property
    def stdin(self) -> Path:
        return self.run_dir / "stdin.fifo"

    @property
    def stdout(self) -> Path:
        return self.run_dir / "stdout.fifo"

    @property
    def status(self) -> Path:
        return self.run_dir / "status.json"

    def make_fifos(self) -> None:
        for fifo in (self.stdin, self.stdout):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo, 0o600)

    def bwrap_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with contextlib.suppress(OSError):
            for line in self.status.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.update(json.loads(line))
        return out


class Workload:
    """A spawned or re-found workload process (see module doc)."""

    def __init__(self, pid: int, start_time: int, files: RunFiles, bwrap: bool, own_child: bool):
        self.pid = pid
        self.start_time = start_time
        self.files = files
        self.bwrap = bwrap
        self.own_child = own_child
        self._exit: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pidfd: int | None = None
        self._watch()

    # -- creation -----------------------------------------------------------
    @classmethod
    def spawn(cls, plan: LaunchPlan, files: RunFiles) -> Workload:
        files.make_fifos()
        fd_in = os.open(files.stdin, os.O_RDWR | os.O_CLOEXEC)
        fd_out = os.open(files.stdout, os.O_RDWR | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd_out, F_SETPIPE_SZ, PIPE_BYTES)
            proc = subprocess.Popen(
                ["sh", "-c", plan.shell_script()],
                stdin=fd_in, stdout=fd_out, stderr=fd_out,
                env=plan.env, start_new_session=True,
            )
        finally:
            os.close(fd_in)
            os.close(fd_out)
        start = proc_start_time(proc.pid) or 0
        # Exit is reaped through the pidfd; marking the Popen done keeps
        # subprocess's own cleanup from reaping (and losing) the exit status.
        proc.returncode = 0
        return cls(proc.pid, start, files, plan.use_bwrap, own_child=True)

    @classmethod
    def find(cls, pid: int, start_time: int, files: RunFiles, bwrap: bool) -> Workload | None:
        """The workload a previous agent started, if it is still that process."""
        if proc_start_time(pid) != start_time:
            return None
        try:
            return cls(pid, start_time, files, bwrap, own_child=False)
        except ProcessLookupError:
            return None

    # -- exit ---------------------------------------------------------------
    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._finish()
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._finish)

    def _finish(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        code: int | None = None
        if self.own_child:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                code = os.waitstatus_to_exitcode(status)
        if self.bwrap:
            reported = self.files.bwrap_status().get("exit-code")
            if isinstance(reported, int):
                code = reported
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int | None:
        """The exit code (negative: killed by that signal; None: unknown,
        because a previous agent spawned it and there was no bwrap to tell)."""
        return await asyncio.shield(self._exit)

    @property
    def exited(self) -> bool:
        return self._exit.done()

    # -- signals ------------------------------------------------------------
    def server_pid(self) -> int | None:
        """The pid of the server itself (see module doc)."""
        if self.exited:
            return None
        if not self.bwrap:
            return self.pid
        init = self.files.bwrap_status().get("child-pid")
        if not isinstance(init, int):
            return None
        children = _children(init)
        return children[0] if children else None

    async def resolve_server_pid(self, timeout: float = 2.0) -> int | None:
        """``server_pid`` once bwrap has set up the namespace and forked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.exited:
            pid = self.server_pid()
            if pid is not None or loop.time() > deadline:
                return pid
            await asyncio.sleep(0.005)
        return None

    def send_signal(self, sig: int) -> bool:
        pid = self.server_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return True
        return False

    def kill(self, extra_pids: list[int] | None = None) -> None:
        """SIGKILL everything the workload is made of."""
        targets: list[int] = list(extra_pids or [])
        if self.bwrap:
            init = self.files.bwrap_status().get("child-pid")
            if isinstance(init, int):
                targets.append(init)
            targets.append(self.pid)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            targets.append(self.pid)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
