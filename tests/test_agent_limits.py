"""Limits reach the workload: through cgroup v1 where writable, else rlimits;
and the workload never runs as root, with or without bubblewrap."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentctl import TEMPLATES, Agent, running_agent


def _limits(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name = line[:26].strip()
        out[name] = line[26:].split()[0]
    return out


@pytest.fixture
def no_cgroups(data_dir: Path) -> Iterator[Agent]:
    args = ["--node", "--templates-dir", str(TEMPLATES), "--cgroups", "off"]
    with running_agent(data_dir, "node-token", args) as agent:
        yield agent


def test_without_cgroups_the_limits_are_rlimits_and_the_user_is_not_root(no_cgroups: Agent) -> None:
    no_cgroups.client().post("/instances", {"id": "lim", "template": "limited", "tokenHash": "tl"})
    c = no_cgroups.client("/i/lim", "tl")
    c.post("/start")
    status = c.wait_phase("running")
    assert status["sandbox"] == {"bwrap": False, "cgroups": False, "uid": status["sandbox"]["uid"]}
    pid = status["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == status["sandbox"]["uid"] != 0
    limits = _limits(pid)
    assert limits["Max processes"] == "8"
    assert limits["Max open files"] == "64"
    assert limits["Max address space"] == str(256 * 2**20)
    assert Path(f"/proc/{pid}/status").read_text().count("NoNewPrivs:\t1") == 1


def test_with_cgroups_the_limits_are_in_the_instance_groups(node: Agent) -> None:
    if not Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory controller here")
    node.client().post("/instances", {"id": "cg", "template": "limited", "tokenHash": "tc"})
    c = node.client("/i/cg", "tc")
    c.post("/start")
    status = c.wait_phase("running")
    assert status["sandbox"]["cgroups"] is True
    pid = status["pid"]
    groups = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    memory_group = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/")
    assert memory_group.name.startswith("cg-")
    assert (memory_group / "memory.limit_in_bytes").read_text().strip() == str(256 * 2**20)
    pids_group = Path("/sys/fs/cgroup/pids") / groups["pids"].lstrip("/")
    assert (pids_group / "pids.max").read_text().strip() == "8"
    cpu_group = Path("/sys/fs/cgroup/cpu") / groups["cpu,cpuacct"].lstrip("/") \
        if "cpu,cpuacct" in groups else Path("/sys/fs/cgroup/cpu") / groups["cpu"].lstrip("/")
    assert (cpu_group / "cpu.cfs_quota_us").read_text().strip() == "50000"
    c.post("/stop")
    c.wait_phase("stopped")
    assert not memory_group.exists(), "the instance's groups go with its workload"
