"""The agent against a real teeworlds-server: a line-based TCP remote console
(econ) behind a password prompt."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentctl import Agent, free_port, read_frames, running_agent
from tests.conftest import TOKEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/usr/games/teeworlds-server"),
                       reason="teeworlds-server is not installed"),
]


@pytest.fixture
def teeworlds(data_dir: Path) -> Iterator[Agent]:
    args = ["--template", "teeworlds", "--var", "econ_password=s3cret-econ",
            "--var", "bind_address=127.0.0.1",
            "--port", f"game={free_port(socket.SOCK_DGRAM)}", "--port", f"econ={free_port()}"]
    with running_agent(data_dir, TOKEN, args) as agent:
        yield agent


def test_commands_go_through_the_password_protected_tcp_console(teeworlds: Agent) -> None:
    c = teeworlds.client()
    c.post("/start")
    status = c.wait_phase("running")
    with c.ws(since=status["consoleSeq"]) as ws:
        # The agent logs in on its own; the first command may wait for the login.
        assert c.command("echo hello-from-gameplane").status_code == 202
        frames = read_frames(ws, lambda f: f.get("line", "").endswith("hello-from-gameplane")
                             and "cmd=" not in f.get("line", ""))
    lines = [f["line"] for f in frames if f["type"] == "output"]
    assert lines[-1].endswith("hello-from-gameplane")
    assert not any("\x00" in line for line in lines), "econ's NUL padding is dropped"


def test_restart_reuses_the_console_port_and_stop_is_clean(teeworlds: Agent) -> None:
    c = teeworlds.client()
    c.post("/start")
    first = c.wait_phase("running")
    c.command("echo warm")
    assert c.post("/restart").status_code == 202
    again = c.wait(lambda s: s["phase"] == "running" and s["busy"] is None
                   and s["pid"] != first["pid"], 30, "restarted")
    assert again["reason"] is None
    assert c.command("echo after-restart").status_code == 202
    c.post("/stop")
    stopped = c.wait_phase("stopped")
    assert stopped["exitCode"] == 0, stopped["reason"]


def test_a_missing_console_password_is_refused(data_dir: Path) -> None:
    args = ["--node"]
    with running_agent(data_dir, "node-token", args) as agent:
        r = agent.client().post("/instances", {"id": "tw", "template": "teeworlds", "tokenHash": "t"})
        assert r.status_code == 422
        assert r.json() == {"error": "invalid_variables", "details": {"missing": ["econ_password"]}}
