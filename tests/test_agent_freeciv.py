"""The agent against a real freeciv-server (Debian's package)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.agentctl import Agent, output_lines, read_frames, running_agent
from tests.conftest import TOKEN

pytestmark = pytest.mark.slow


def test_start_becomes_ready_runs_commands_and_stop_saves_the_world(freeciv: Agent, data_dir: Path) -> None:
    c = freeciv.client()
    assert c.post("/start").status_code == 202
    status = c.wait_phase("running")
    assert status["probes"]["log"]["passed"] and status["probes"]["tcp"]["passed"]
    assert status["sandbox"] == {"bwrap": True, "cgroups": True, "uid": status["sandbox"]["uid"]}
    pid = status["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == status["sandbox"]["uid"] >= 300000

    with c.ws(since=status["consoleSeq"]) as ws:
        assert c.command("list").status_code == 202
        frames = read_frames(ws, lambda f: f.get("line", "").startswith("AI*"))
    assert any(line == "List of players:" for _, line in output_lines(frames))

    assert c.post("/stop").status_code == 202
    stopped = c.wait_phase("stopped")
    assert stopped["exitCode"] == 0 and stopped["pid"] is None
    saves = list((data_dir / "instances/default/data/saves").glob("*.sav*"))
    assert saves, "stop must save the game before quitting"


def test_kill_9_of_the_server_is_a_crash_and_the_policy_restarts_it(freeciv: Agent) -> None:
    c = freeciv.client()
    c.post("/start")
    first = c.wait_phase("running")
    os.kill(first["pid"], signal.SIGKILL)
    crashed = c.wait(lambda s: s["phase"] == "crashed", 10, "crash")
    assert "SIGKILL" in crashed["reason"] and "restarting" in crashed["reason"]
    again = c.wait(lambda s: s["phase"] == "running" and s["restarts"] == 1, 30, "restart")
    assert again["pid"] != first["pid"]


def test_readiness_timeout_ends_the_start_as_crashed_with_the_reason(data_dir: Path, game_port: int) -> None:
    shipped = (Path(__file__).parents[1] / "src/gameplane/templates/freeciv.toml").read_text()
    template = data_dir.parent / "freeciv-slow.toml"
    template.write_text(shipped.replace('name = "freeciv"', 'name = "freeciv-slow"')
                        .replace("log = 'Now accepting", "log = 'This line never comes")
                        .replace("timeout = 60", "timeout = 2"))
    args = ["--template", str(template), "--var", "bind_address=127.0.0.1", "--port", f"game={game_port}"]
    with running_agent(data_dir, TOKEN, args) as agent:
        c = agent.client()
        c.post("/start")
        status = c.wait_phase("crashed", 20)
        assert "readiness probe 'log' did not pass within 2s" in status["reason"]
        assert status["pid"] is None
        # The server was stopped, its port is free again.
        with socket.socket() as s:
            s.bind(("127.0.0.1", game_port))


def test_console_websocket_resumes_with_no_lost_and_no_repeated_line(freeciv: Agent) -> None:
    c = freeciv.client()
    c.post("/start")
    c.wait_phase("running")
    with c.ws(since=0) as ws:
        frames = read_frames(ws, lambda f: "Now accepting" in f.get("line", ""))
    seen = output_lines(frames)
    last = seen[-1][0]
    # Output produced while nobody listens.
    for _ in range(3):
        assert c.command("list").status_code == 202
    time.sleep(0.5)
    end = c.status()["consoleSeq"]
    assert end > last
    with c.ws(since=last) as ws:
        frames = read_frames(ws, lambda f: f.get("seq") == end)
    resumed = output_lines(frames)
    seqs = [s for s, _ in seen + resumed]
    assert seqs == list(range(1, end + 1)), "every line once, in order"
    assert not [f for f in frames if f["type"] == "gap"]


def test_a_restarted_agent_finds_its_running_server(freeciv: Agent) -> None:
    c = freeciv.client()
    c.post("/start")
    before = c.wait_phase("running")
    freeciv.sigkill()
    assert os.path.exists(f"/proc/{before['pid']}"), "the server outlives its agent"
    freeciv.start()
    after = c.wait_phase("running", 10)
    assert after["pid"] == before["pid"]
    assert after["consoleSeq"] >= before["consoleSeq"]
    with c.ws(since=after["consoleSeq"]) as ws:
        assert c.command("list").status_code == 202
        frames = read_frames(ws, lambda f: f.get("line") == "List of players:")
    assert frames[-1]["seq"] > before["consoleSeq"], "numbering continues after the restart"
    c.post("/stop")
    stopped = c.wait_phase("stopped")
    assert stopped["exitCode"] == 0, "bwrap's status file tells the exit code of a re-found server"


def test_power_actions_are_serialized_and_kill_bypasses(freeciv: Agent) -> None:
    c = freeciv.client()
    assert c.post("/start").status_code == 202
    busy = c.post("/stop")
    assert busy.status_code == 409 and busy.json()["error"] == "busy"
    c.wait_phase("running")
    assert c.post("/start").json()["error"] == "already_running"
    assert c.post("/kill").status_code == 202
    status = c.wait_phase("stopped", 10)
    assert "SIGKILL" in status["reason"]


def test_restart_twice_ends_running_each_time(freeciv: Agent) -> None:
    c = freeciv.client()
    c.post("/start")
    pid = c.wait_phase("running")["pid"]
    for _ in range(2):
        assert c.post("/restart").status_code == 202
        status = c.wait(lambda s, old=pid: s["busy"] is None and s["pid"] not in (None, old), 30, "restart")
        assert status["phase"] == "running", status["reason"]
        pid = status["pid"]
        time.sleep(0.5)
        again = c.status()
        assert again["phase"] == "running" and again["pid"] == pid, "the old exit must not be judged later"
