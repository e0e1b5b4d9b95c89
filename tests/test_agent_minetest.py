"""The agent against a real minetest-server (Debian's package): no console,
UDP readiness, stop by signal."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentctl import Agent, free_port, running_agent
from tests.conftest import TOKEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/usr/lib/minetest/minetestserver"),
                       reason="minetest-server is not installed"),
]


@pytest.fixture
def minetest(data_dir: Path) -> Iterator[Agent]:
    port = free_port(socket.SOCK_DGRAM)
    args = ["--template", "minetest", "--var", "bind_address=127.0.0.1", "--port", f"game={port}"]
    with running_agent(data_dir, TOKEN, args) as agent:
        yield agent


def test_start_is_ready_by_log_and_udp_and_stop_by_signal_saves_the_world(minetest: Agent,
                                                                             data_dir: Path) -> None:
    c = minetest.client()
    assert c.post("/start").status_code == 202
    status = c.wait_phase("running")
    assert status["probes"]["udp"]["passed"] and status["probes"]["log"]["passed"]
    assert status["probes"]["udp"]["detail"].startswith("udp reply")
    r = c.command("status")
    assert r.status_code == 409 and r.json()["error"] == "no_console"
    assert c.post("/stop").status_code == 202
    stopped = c.wait_phase("stopped")
    assert stopped["exitCode"] == 0
    world = data_dir / "instances/default/data/world"
    # map.sqlite appears only once a player makes the server generate blocks.
    assert (world / "world.mt").exists() and (world / "map_meta.txt").exists()
    assert "game_time" in (world / "env_meta.txt").read_text(), "the world's clock is saved at shutdown"
    log = (data_dir / "instances/default/run/console.log").read_text()
    assert "got SIGTERM, shutting down" in log and "Server: Shutting down" in log


def test_kill_9_is_a_crash_and_is_restarted(minetest: Agent) -> None:
    c = minetest.client()
    c.post("/start")
    first = c.wait_phase("running")
    os.kill(first["pid"], signal.SIGKILL)
    again = c.wait(lambda s: s["phase"] == "running" and s["restarts"] == 1, 40, "restart")
    assert again["pid"] != first["pid"]


def test_readiness_timeout_when_the_udp_probe_never_answers(data_dir: Path) -> None:
    if not shutil.which("minetestserver", path="/usr/lib/minetest"):
        pytest.skip("minetest-server is not installed")
    shipped = (Path(__file__).parents[1] / "src/gameplane/templates/minetest.toml").read_text()
    template = data_dir.parent / "minetest-deaf.toml"
    # The probe now expects a reply the server never sends.
    template.write_text(shipped.replace('name = "minetest"', 'name = "minetest-deaf"')
                        .replace('expect = "4f457403 0001 00"', 'expect = "deadbeef"')
                        .replace("timeout = 60", "timeout = 2"))
    port = free_port(socket.SOCK_DGRAM)
    args = ["--template", str(template), "--var", "bind_address=127.0.0.1", "--port", f"game={port}"]
    with running_agent(data_dir, TOKEN, args) as agent:
        c = agent.client()
        c.post("/start")
        status = c.wait_phase("crashed", 30)
        assert "readiness probe 'udp' did not pass within 2s" in status["reason"]
        assert "unexpected reply 4f457403" in status["reason"]
