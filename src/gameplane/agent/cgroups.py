"""Resource limits and usage through cgroup v1 (the hierarchy this kind of host
has; the v2 tree is not usable here). One group per instance in each of the
memory, cpu, cpuacct and pids controllers, under ``gameplane/``.

When the controllers are not writable (not root, or no cgroupfs), the agent
falls back to rlimits set by the launcher; ``available()`` tells which.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from gameplane.templates.model import Limits

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
_CFS_PERIOD_US = 100_000


def available(root: Path = ROOT) -> bool:
    for ctrl in CONTROLLERS:
        base = root / ctrl
        if not (base / "cgroup.procs").exists():
            return False
        if not os.access(base, os.W_OK):
            return False
    return True


@dataclass(frozen=True)
class Usage:
    memory_bytes: int
    cpu_ns: int
    processes: int


class Cgroup:
    def __init__(self, name: str, root: Path = ROOT):
        self.name = name
        self._dirs = {ctrl: root / ctrl / "gameplane" / name for ctrl in CONTROLLERS}

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self._dirs.values()]

    def create(self, limits: Limits) -> None:
        for d in self._dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        mem = self._dirs["memory"]
        if limits.memory:
            (mem / "memory.limit_in_bytes").write_text(str(limits.memory))
            # Swap would only hide the limit; cap memory+swap at the same figure where allowed.
            with contextlib.suppress(OSError):
                (mem / "memory.memsw.limit_in_bytes").write_text(str(limits.memory))
        if limits.cpu:
            cpu = self._dirs["cpu"]
            (cpu / "cpu.cfs_period_us").write_text(str(_CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(int(limits.cpu * _CFS_PERIOD_US)))
        if limits.processes:
            (self._dirs["pids"] / "pids.max").write_text(str(limits.processes))

    def pids(self) -> list[int]:
        try:
            text = (self._dirs["pids"] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def usage(self) -> Usage | None:
        try:
            mem = self._dirs["memory"] / "memory.stat"
            stat = dict(line.split() for line in mem.read_text().splitlines())
            # RSS + page cache the workload cannot drop would overstate; report what top would.
            memory = int(stat.get("total_rss", stat.get("rss", "0"))) + int(stat.get("total_shmem", "0"))
            cpu = int((self._dirs["cpuacct"] / "cpuacct.usage").read_text())
            procs = int((self._dirs["pids"] / "pids.current").read_text())
        except (OSError, ValueError):
            return None
        return Usage(memory, cpu, procs)

    def destroy(self) -> bool:
        """Remove the groups; False while a group still has processes (EBUSY)."""
        gone = True
        for d in self._dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone
