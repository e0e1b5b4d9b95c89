"""A node agent hosting several instances, and every bad input the contract
names: each answers a clear envelope."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from tests.agentctl import Agent, free_port, read_frames

needs_freeciv = pytest.mark.skipif(not shutil.which("freeciv-server", path="/usr/games"),
                                   reason="freeciv-server is not installed")


def create(node: Agent, instance_id: str, template: str, token: str, **extra: object) -> dict:
    r = node.client().post("/instances", {"id": instance_id, "template": template,
                                          "tokenHash": token, **extra})
    assert r.status_code == 201, r.text
    return r.json()["instance"]


@needs_freeciv
@pytest.mark.slow
def test_two_instances_in_one_agent_are_isolated(node: Agent, data_dir: Path) -> None:
    a = create(node, "alpha", "freeciv", "token-a", variables={"bind_address": "127.0.0.1"},
               ports={"game": free_port()})
    b = create(node, "beta", "freeciv", "token-b", variables={"bind_address": "127.0.0.1"},
               ports={"game": free_port()})
    ca = node.client(a["baseUrl"], "token-a")
    cb = node.client(b["baseUrl"], "token-b")
    # Tokens are per instance, in both directions.
    assert node.client(a["baseUrl"], "token-b").get("/status").status_code == 401
    assert node.client(b["baseUrl"], "token-a").post("/start").status_code == 401
    assert node.client(a["baseUrl"], "node-token").get("/status").status_code == 401

    ca.post("/start")
    cb.post("/start")
    sa, sb = ca.wait_phase("running"), cb.wait_phase("running")
    assert sa["sandbox"]["uid"] != sb["sandbox"]["uid"]
    assert os.stat(f"/proc/{sa['pid']}").st_uid != os.stat(f"/proc/{sb['pid']}").st_uid
    # Each workload sees only its own data dir.
    for sid in ("alpha", "beta"):
        data = data_dir / "instances" / sid / "data"
        assert os.stat(data).st_mode & 0o007 == 0, "no access for other instances"
    root_a = Path(f"/proc/{sa['pid']}/root")
    assert not (root_a / str(data_dir / "instances/beta/data").lstrip("/")).exists()

    # A console command reaches only its own server.
    with cb.ws(since=cb.status()["consoleSeq"]) as ws_b:
        with ca.ws(since=ca.status()["consoleSeq"]) as ws_a:
            ca.command("show timeout")
            read_frames(ws_a, lambda f: "timeout" in f.get("line", ""))
        cb.command("list")
        frames_b = read_frames(ws_b, lambda f: f.get("line") == "List of players:")
    assert not any("timeout" in f.get("line", "") for f in frames_b)

    # Killing one leaves the other running.
    os.kill(sa["pid"], signal.SIGKILL)
    ca.wait(lambda s: s["phase"] == "crashed", 10, "alpha crashed")
    assert cb.status()["phase"] == "running" and cb.status()["pid"] == sb["pid"]

    listing = node.client().get("/instances").json()["instances"]
    assert {i["id"] for i in listing} == {"alpha", "beta"}
    assert node.client().request("DELETE", "/instances/alpha").status_code == 204
    assert not (data_dir / "instances/alpha").exists()
    assert ca.get("/status").status_code == 404


def test_node_routes_need_the_node_token(node: Agent) -> None:
    assert node.client(token="").get("/instances").json()["error"] == "missing_token"
    assert node.client(token="wrong").get("/instances").status_code == 401
    assert node.client(token="").get("/health").json() == {"status": "ok"}


def test_bad_templates_are_refused_with_the_problem(node: Agent, data_dir: Path) -> None:
    bad = data_dir.parent / "bad.toml"
    bad.write_text('[template]\nname = "bad"\ncolour = "red"\n[start]\ncommand = ["/bin/true"]\n')
    r = node.client().post("/instances", {"id": "x", "template": str(bad), "tokenHash": "t"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_template"
    assert "template.colour: unknown field" in r.json()["details"]["problems"]

    bad.write_text('[template]\nname = "bad"\n[start]\ncommand = ["/bin/true"]\n[ready]\nlog = "(unclosed"\n')
    r = node.client().post("/instances", {"id": "x", "template": str(bad), "tokenHash": "t"})
    assert r.status_code == 422 and "bad regular expression" in str(r.json()["details"])

    r = node.client().post("/instances", {"id": "x", "template": "no-such-game", "tokenHash": "t"})
    assert r.status_code == 404 and r.json()["error"] == "template_not_found"
    r = node.client().post("/instances", {"id": "../etc", "template": "quitter", "tokenHash": "t"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_instance_id"
    r = node.client().post("/instances", {"template": "quitter", "tokenHash": "t"})
    assert r.status_code == 422 and r.json() == {"error": "missing_field", "details": {"field": "id"}}
    r = node.client().post("/instances", {"id": "v", "template": "chatty", "tokenHash": "t",
                                          "variables": {"count": "1\nrm -rf /"}})
    assert r.status_code == 422 and r.json()["error"] == "invalid_variables"
    assert not (data_dir / "instances/x").exists() and not (data_dir / "instances/v").exists()


def test_missing_binary_and_port_in_use_refuse_the_start(node: Agent, data_dir: Path) -> None:
    missing = data_dir.parent / "missing.toml"
    missing.write_text('[template]\nname = "missing"\n[start]\ncommand = ["/usr/games/not-a-game"]\n')
    c = node.client(create(node, "m", str(missing), "tm")["baseUrl"], "tm")
    r = c.post("/start")
    assert r.status_code == 422
    assert r.json() == {"error": "binary_not_found", "details": {"command": "/usr/games/not-a-game"}}

    port = free_port()
    ported = data_dir.parent / "ported.toml"
    ported.write_text('[template]\nname = "ported"\n[ports.game]\ndefault = 1\n'
                      '[start]\ncommand = ["/bin/sleep", "60"]\n')
    c = node.client(create(node, "p", str(ported), "tp", ports={"game": port})["baseUrl"], "tp")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = c.post("/start")
    assert r.status_code == 409
    assert r.json() == {"error": "port_in_use",
                        "details": {"port": "game", "number": port, "protocol": "tcp"}}
    assert c.status()["phase"] == "stopped"


def test_commands_and_tokens_are_checked(node: Agent) -> None:
    base = create(node, "q", "quitter", "tq")["baseUrl"]
    c = node.client(base, "tq")
    r = c.command("hello")
    assert r.status_code == 409 and r.json()["error"] == "not_running"
    assert node.client(base, "").get("/status").json()["error"] == "missing_token"
    assert node.client(base, "tq-wrong").get("/status").json()["error"] == "invalid_token"
    assert node.client(base, "").get("/health").status_code == 200
    assert node.client("/i/nobody", "tq").get("/status").json()["error"] == "instance_not_found"
    assert c.get("/backups").json() == {"backups": []}, "backups are served under the node prefix"
    assert isinstance(c.get("/files").json()["entries"], list), "files are served under the node prefix"
    r = c.get("/files?path=x")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = c.get("/ide/lab")
    assert r.status_code == 501 and r.json()["error"] == "not_implemented"
    assert c.post("/stop").json()["error"] == "not_running"
    c.post("/start")
    c.wait_phase("running")
    for bad in ({"command": ""}, {"command": "a\nb"}, {"command": 5}, {}):
        r = c.post("/console/command", bad)
        assert r.status_code == 422 and r.json()["error"] == "invalid_command"
    r = c.request("POST", "/console/command", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    assert c.request("PATCH", "/start").json()["error"] == "method_not_allowed"
    # An in-game stop (the server exits 0 by itself) is not a crash.
    assert c.command("now").status_code == 202
    status = c.wait_phase("stopped", 10)
    assert status["exitCode"] == 0 and "stopped by itself" in status["reason"]
    assert status["restarts"] == 0


def test_crash_loop_is_restarted_at_most_max_restarts_times(node: Agent) -> None:
    c = node.client(create(node, "loop", "crashloop", "tl")["baseUrl"], "tl")
    c.post("/start")
    status = c.wait(lambda s: "giving up" in (s["reason"] or ""), 30, "restart limit")
    assert status["phase"] == "crashed" and status["restarts"] == 2
    assert "exited with code 3" in status["reason"]
    # Stopping a crashed instance settles it as stopped.
    assert c.post("/stop").status_code == 202
    assert c.wait_phase("stopped")["phase"] == "stopped"
