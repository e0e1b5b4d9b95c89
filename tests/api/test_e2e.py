"""The control plane end to end over HTTP: `gameplane up` with its local node
agent, real freeciv servers, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.controlplane import ControlPlane, running_control_plane

pytestmark = pytest.mark.slow


@pytest.fixture
def cp(data_dir: Path, empty_database_url: str) -> Iterator[ControlPlane]:
    with running_control_plane(data_dir, empty_database_url) as plane:
        yield plane


def test_create_ready_stop_start_restart_delete(cp: ControlPlane) -> None:
    server = cp.create("my civ")
    assert server["state"]["phase"] == "provisioning" and server["state"]["ready"] is False
    sid = server["id"]
    state = cp.wait_phase(sid, "stopped")
    assert state["ready"] is True and state["reachable"] is True and state["online"] is False

    assert cp.power(sid, "start").status_code == 202
    running = cp.wait_phase(sid, "running")
    assert running["online"] is True and running["resources"]["memoryBytes"] > 0
    r = cp.request("POST", f"/api/game/servers/{sid}/console/command", json={"command": "list"})
    assert r.status_code == 202 and r.json()["accepted"] is True

    assert cp.power(sid, "stop").status_code == 202
    cp.wait_phase(sid, "stopped")
    assert cp.power(sid, "start").status_code == 202
    first = cp.wait_phase(sid, "running")
    assert cp.power(sid, "restart").status_code == 202
    cp.wait(sid, lambda s: s["phase"] == "running" and s["since"] != first["since"], 30, "restarted")

    listing = cp.request("GET", "/api/game/servers").json()["servers"]
    assert [s["id"] for s in listing] == [sid]
    assert cp.request("DELETE", f"/api/game/servers/{sid}").status_code == 204
    assert cp.request("GET", f"/api/game/servers/{sid}").status_code == 404
    assert not (cp.data_dir / "agent/instances" / sid).exists()


def test_events_stream_replays_and_goes_live(cp: ControlPlane) -> None:
    sid = cp.create("evented")["id"]
    cp.wait_phase(sid, "stopped")
    events: list[str] = []
    with httpx.stream("GET", cp.url + "/api/events", headers={**cp.headers, "Last-Event-ID": "0"},
                      timeout=httpx.Timeout(10)) as stream:
        cp.power(sid, "start")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if '"phase": "running"' in line:
                break
    # Lifecycle events in order; the poller's "state" events interleave as it sees them.
    assert [e for e in events if e != "state"][:2] == ["provisioning", "active"]
    assert events.count("state") >= 2


def test_a_killed_agent_is_unreachable_and_recovers(cp: ControlPlane) -> None:
    sid = cp.create("fragile")["id"]
    cp.wait_phase(sid, "stopped")
    cp.power(sid, "start")
    cp.wait_phase(sid, "running")
    agent = cp.agent_process()
    assert agent is not None
    game_pid = next(p.pid for p in agent.children(recursive=True) if "freeciv" in p.name())
    t0 = time.monotonic()
    agent.kill()
    state = cp.wait_phase(sid, "unreachable", timeout=5)
    assert time.monotonic() - t0 <= 2 * cp.poll_interval + 0.5
    assert state["ready"] is False and state["online"] is False and state["reachable"] is False
    # The API starts its agent again after a pause; the agent finds its server still running.
    back = cp.wait_phase(sid, "running", timeout=20)
    assert back["ready"] is True and back["online"] is True
    assert cp.agent_process() is not None and cp.agent_process().pid != agent.pid  # type: ignore[union-attr]
    assert os.path.exists(f"/proc/{game_pid}"), "the game server outlived its agent"


def test_an_agent_found_after_an_api_restart_is_restarted_when_it_dies(cp: ControlPlane) -> None:
    sid = cp.create("adopted")["id"]
    cp.wait_phase(sid, "stopped")
    cp.power(sid, "start")
    cp.wait_phase(sid, "running")
    cp.sigkill()
    cp.start()  # this API finds the node agent running: it is not its child
    agent = cp.agent_process()
    assert agent is not None
    agent.kill()
    cp.wait_phase(sid, "unreachable", timeout=5)
    back = cp.wait_phase(sid, "running", timeout=20)
    assert back["ready"] is True
    again = cp.agent_process()
    assert again is not None and again.pid != agent.pid


def test_a_hung_agent_is_unreachable_within_two_intervals_and_never_ready(cp: ControlPlane) -> None:
    sid = cp.create("frozen")["id"]
    cp.wait_phase(sid, "stopped")
    agent = cp.agent_process()
    assert agent is not None
    agent.suspend()  # accepts TCP (the kernel does), never answers
    try:
        t0 = time.monotonic()
        state = cp.wait_phase(sid, "unreachable", timeout=5)
        assert time.monotonic() - t0 <= 2 * cp.poll_interval + 0.5
        seen = []
        for _ in range(10):
            seen.append(cp.server(sid)["state"])
            time.sleep(cp.poll_interval / 2)
        assert all(s["phase"] == "unreachable" and s["ready"] is False for s in seen)
        assert "no answer within" in state["reason"]
    finally:
        agent.resume()
    cp.wait(sid, lambda s: s["phase"] == "stopped" and s["ready"], 20, "recovered")


def test_an_api_restart_rebuilds_state_and_loses_nothing(cp: ControlPlane) -> None:
    sid = cp.create("persistent")["id"]
    cp.wait_phase(sid, "stopped")
    cp.power(sid, "start")
    before = cp.wait_phase(sid, "running")
    cp.sigkill()
    cp.start()
    after = cp.wait_phase(sid, "running")
    assert after["since"] == before["since"], "the game never stopped: same phase since"
    assert cp.request("GET", "/api/game/servers").json()["servers"][0]["id"] == sid
    r = cp.request("POST", f"/api/game/servers/{sid}/console/command", json={"command": "list"})
    assert r.status_code == 202


def test_an_api_killed_mid_provisioning_leaks_no_agent_instance(cp: ControlPlane) -> None:
    agent = cp.agent_process()
    assert agent is not None
    agent.suspend()  # provisioning now waits on the node agent
    sid = cp.create("interrupted")["id"]
    time.sleep(0.5)
    cp.sigkill()
    agent.resume()  # the agent now finishes creating an instance nobody will own
    time.sleep(1.0)
    cp.start()
    state = cp.wait_phase(sid, "failed", timeout=10)
    assert "interrupted" in state["reason"]
    assert not (cp.data_dir / "agent/instances" / sid).exists(), "the orphan agent instance was removed"
    r = cp.power(sid, "start")
    assert r.status_code == 409 and r.json()["error"] == "instance_failed"
    assert cp.request("DELETE", f"/api/game/servers/{sid}").status_code == 204


def test_delete_during_provisioning_cancels_it(cp: ControlPlane) -> None:
    agent = cp.agent_process()
    assert agent is not None
    agent.suspend()
    sid = cp.create("hasty")["id"]
    time.sleep(0.3)
    deleting = threading.Thread(
        target=lambda: cp.request("DELETE", f"/api/game/servers/{sid}"))
    deleting.start()
    time.sleep(0.3)
    agent.resume()
    deleting.join(30)
    assert cp.request("GET", f"/api/game/servers/{sid}").status_code == 404
    time.sleep(0.5)
    assert not (cp.data_dir / "agent/instances" / sid).exists()


def test_bad_input_gets_clear_envelopes(cp: ControlPlane) -> None:
    def create(body: object) -> httpx.Response:
        return cp.request("POST", "/api/game/servers", json=body)

    r = create({"name": "x", "template": "no-such-game"})
    assert r.status_code == 422 and r.json()["error"] == "unknown_template"
    assert "freeciv" in r.json()["details"]["available"]
    for name in ("", "../etc", "a" * 65, "\nnewline"):
        r = create({"name": name, "template": "freeciv"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_name", name
    r = create({"template": "freeciv"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = create({"name": "v", "template": "freeciv", "variables": {"nope": "1"}})
    assert r.status_code == 422 and r.json()["error"] == "invalid_variables"
    r = cp.request("POST", "/api/game/servers", content=b"{broken",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert cp.request("GET", "/api/game/servers/zzzz").json() == {"error": "not_found",
                                                                  "details": {"id": "zzzz"}}
    assert cp.power("zzzz", "start").status_code == 404
    sid = cp.create("twin")["id"]
    r = create({"name": "twin", "template": "freeciv", "variables": {"bind_address": "127.0.0.1"}})
    assert r.status_code == 409 and r.json()["error"] == "name_taken"
    cp.wait_phase(sid, "stopped")
    r = cp.power(sid, "stop")
    assert r.status_code == 409 and r.json()["error"] == "not_running", "the agent's 409 is forwarded"
    r = cp.request("POST", f"/api/game/servers/{sid}/console/command", json={"command": "list"})
    assert r.status_code == 409 and r.json()["error"] == "not_running"
    assert cp.request("GET", "/nowhere").json()["error"] == "not_found"


def test_operations_routes(cp: ControlPlane) -> None:
    anonymous = httpx.get(cp.url + "/api/game/servers")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert cp.request("GET", "/api/me").json()["user"]["role"] == "admin"
    assert cp.request("GET", "/healthz").json() == {"status": "ok"}
    assert cp.request("GET", "/readyz").json()["ready"] is True
    sid = cp.create("metered")["id"]
    cp.wait_phase(sid, "stopped")
    time.sleep(cp.poll_interval * 2)
    metrics = cp.request("GET", "/metrics").text
    assert 'gameplane_instances{phase="stopped"} 1.0' in metrics
    assert "gameplane_poll_cycle_seconds" in metrics
    spec = cp.request("GET", "/openapi.json").json()
    assert "/api/game/servers/{server_id}/restart" in spec["paths"]
    assert cp.request("GET", "/docs").status_code == 200
    names = [t["name"] for t in cp.request("GET", "/api/templates").json()["templates"]]
    assert {"freeciv", "minetest", "teeworlds"} <= set(names)


def test_a_host_without_room_refuses_with_the_reason(data_dir: Path, empty_database_url: str) -> None:
    port = 40000 + os.getpid() % 10000
    with running_control_plane(data_dir, empty_database_url, port_range=f"{port}-{port}") as plane:
        first = plane.create("only one")
        r = plane.request("POST", "/api/game/servers",
                          json={"name": "one too many", "template": "freeciv"})
        assert r.status_code == 503 and r.json()["error"] == "no_capacity"
        assert r.json()["details"]["range"] == f"{port}-{port}"
        assert plane.wait_phase(first["id"], "stopped")["ready"] is True
        servers = plane.request("GET", "/api/game/servers").json()["servers"]
        assert [s["name"] for s in servers] == ["only one"]


def test_a_provisioning_past_its_timeout_fails_and_leaves_nothing(data_dir: Path,
                                                                   empty_database_url: str) -> None:
    with running_control_plane(data_dir, empty_database_url, provision_timeout="2",
                               reconcile_interval="1") as plane:
        agent = plane.agent_process()
        assert agent is not None
        agent.suspend()
        try:
            sid = plane.create("slowpoke")["id"]
            state = plane.wait_phase(sid, "failed", timeout=10)
        finally:
            agent.resume()
        assert state["reason"] == "not ready within 2s" and state["ready"] is False
        # The agent finishes the creation it was asked for; the reconciler removes it.
        deadline = time.monotonic() + 15
        while (plane.data_dir / "agent/instances" / sid).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (plane.data_dir / "agent/instances" / sid).exists()
