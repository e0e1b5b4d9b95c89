"""Idle memory of one node agent: RSS with 0, 1 and 100 instances.

A node agent (``gameplane agent --node``) is started in a temp dir with a tiny
bench template whose workload is ``/bin/sleep``. Instances are created through
``POST /instances`` and left idle (never started). The baseline is the same
process with 0 instances, measured first in the same run.

Optionally (on by default, ``--no-running`` to skip) all 100 instances are
then started, so each supervises a running sleep workload, and the agent's own
RSS is measured again; then they are killed and the agent is stopped.

Run: ``.venv/bin/python bench/agent_memory.py [--instances 100] [--no-running]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    CGROUP_ROOT,
    Agent,
    cgroup_name,
    check_python,
    mb,
    median,
    open_fds,
    rss_bytes,
    temp_dir,
)

check_python()

import httpx  # noqa: E402

NODE_TOKEN = "bench-node-token"
INSTANCE_TOKEN = "bench-instance-token"
INSTANCE_AUTH = {"Authorization": f"Bearer {INSTANCE_TOKEN}"}
TEMPLATE = """\
# Bench workload: sleeps, prints nothing, stops on SIGTERM.
[template]
name = "benchsleep"
description = "gameplane memory benchmark workload"

[start]
command = ["/bin/sleep", "3600"]

[stop]
signal = "SIGTERM"
timeout = 5
kill_timeout = 5

[console]
type = "stdin"

[restart]
policy = "never"
"""


def settled_rss(pid: int, settle: float = 1.0, samples: int = 5) -> int:
    """Median VmRSS after the process has had ``settle`` seconds to go idle."""
    time.sleep(settle)
    values = []
    for _ in range(samples):
        values.append(rss_bytes(pid))
        time.sleep(0.1)
    return int(median([float(v) for v in values]))


def leftover_cgroups(data_dir: Path) -> list[str]:
    """Instances whose pids cgroup directory still exists (the agent removes
    it when the workload exits)."""
    out = []
    for root in sorted((data_dir.resolve() / "instances").iterdir()):
        name = cgroup_name(root)
        if (CGROUP_ROOT / "pids" / "gameplane" / name).exists():
            out.append(name)
    return out


def wait_phases(client: httpx.Client, want: set[str], count: int, timeout: float) -> dict[str, int]:
    """Poll GET /instances until ``count`` instances are in one of ``want``."""
    deadline = time.monotonic() + timeout
    phases: dict[str, int] = {}
    while time.monotonic() < deadline:
        body = client.get("/instances").json()
        phases = {}
        for inst in body["instances"]:
            phases[inst["phase"]] = phases.get(inst["phase"], 0) + 1
        if sum(n for p, n in phases.items() if p in want) >= count:
            return phases
        time.sleep(0.1)
    sample = next((i["id"] for i in body["instances"] if i["phase"] not in want), None)
    detail = client.get(f"/i/{sample}/status", headers=INSTANCE_AUTH).json() if sample else {}
    raise RuntimeError(f"instances not {sorted(want)} within {timeout}s: {phases}; "
                       f"e.g. {sample}: {detail.get('reason')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--no-running", action="store_true",
                        help="skip the measurement with every instance running a sleep workload")
    args = parser.parse_args()
    n = args.instances
    started = time.monotonic()

    with temp_dir("gp-bench-mem-") as work:
        templates = work / "templates"
        templates.mkdir()
        (templates / "benchsleep.toml").write_text(TEMPLATE)
        agent = Agent(work, "node", NODE_TOKEN, node=True,
                      extra=["--templates-dir", str(templates)])
        try:
            agent.start()
            client = httpx.Client(base_url=agent.url, headers=agent.headers, timeout=30)
            assert client.get("/instances").status_code == 200

            rss0 = settled_rss(agent.pid)
            fds0 = open_fds(agent.pid)

            def create(i: int) -> None:
                r = client.post("/instances", json={
                    "id": f"i{i:03d}", "template": "benchsleep", "tokenHash": INSTANCE_TOKEN})
                if r.status_code != 201:
                    raise RuntimeError(f"POST /instances -> {r.status_code} {r.text}")

            create(0)
            rss1 = settled_rss(agent.pid)
            t0 = time.monotonic()
            for i in range(1, n):
                create(i)
            create_s = time.monotonic() - t0
            rssn = settled_rss(agent.pid)
            fdsn = open_fds(agent.pid)
            per_extra = (rssn - rss1) / (n - 1)

            print(f"agent_memory: node agent pid {agent.pid}, idle instances (never started)")
            print(f"  0 instances   : {mb(rss0):8.1f} MB RSS  ({fds0} open fds)   [baseline]")
            print(f"  1 instance    : {mb(rss1):8.1f} MB RSS")
            print(f"  {n} instances : {mb(rssn):8.1f} MB RSS  ({fdsn} open fds)")
            print(f"  per extra instance: {per_extra / 1024:8.1f} KiB "
                  f"({(fdsn - fds0) / n:.2f} fds per instance)")
            print(f"  creating {n - 1} instances took {create_s:.2f}s "
                  f"({(n - 1) / create_s:.0f}/s)")
            ratio = rssn / rss0
            print(f"  ratio {n}-instance RSS / 0-instance RSS: {ratio:.3f}")

            running_part = ""
            if not args.no_running:
                t0 = time.monotonic()
                for i in range(n):
                    r = client.post(f"/i/i{i:03d}/start",
                                    headers=INSTANCE_AUTH)
                    if r.status_code != 202:
                        raise RuntimeError(f"start i{i:03d} -> {r.status_code} {r.text}")
                phases = wait_phases(client, {"running"}, n, timeout=60)
                start_s = time.monotonic() - t0
                rssr = settled_rss(agent.pid)
                fdsr = open_fds(agent.pid)
                print(f"  {n} running   : {mb(rssr):8.1f} MB RSS  ({fdsr} open fds)  "
                      f"[agent only; all {n} running after {start_s:.2f}s: {phases}]")
                print(f"  per running instance over idle: {(rssr - rssn) / n / 1024:8.1f} KiB, "
                      f"{(fdsr - fdsn) / n:.2f} fds")
                for i in range(n):
                    client.post(f"/i/i{i:03d}/kill",
                                headers=INSTANCE_AUTH)
                wait_phases(client, {"stopped", "crashed"}, n, timeout=60)
                rsss = settled_rss(agent.pid)
                leaked = leftover_cgroups(agent.data_dir)
                print(f"  after killing all: {mb(rsss):8.1f} MB RSS ({open_fds(agent.pid)} open fds); "
                      f"{len(leaked)} of {n} stopped instances still have cgroup dirs"
                      + (f" (e.g. {leaked[0]})" if leaked else ""))
                running_part = f", {n} running {mb(rssr):.1f} MB"
            client.close()
        except Exception:
            print(f"--- agent log tail ---\n{agent.log_tail()}", file=sys.stderr)
            raise
        finally:
            agent.stop()

    elapsed = time.monotonic() - started
    print(f"SUMMARY agent_memory: 0 inst {mb(rss0):.1f} MB, 1 inst {mb(rss1):.1f} MB, "
          f"{n} inst {mb(rssn):.1f} MB, {per_extra / 1024:.1f} KiB/extra instance{running_part}; "
          f"ratio {n}/0 = {ratio:.3f} ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
