"""The console websocket through the API (DESIGN.md section 5), against `gameplane
up` with its node agent and real workloads: freeciv for a typed command, the
`chatty` test template (it prints N numbered lines for a command N) for resume,
backpressure and limits. Close codes are 4000 + the HTTP status of the error
frame sent before the close (gameplane.console.proxy)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.consolectl import Console, Frame, open_console, output_lines, ticket
from tests.controlplane import ControlPlane, running_control_plane

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def plane(data_dir: Path, **settings: str) -> Iterator[ControlPlane]:
    """`gameplane up` on SQLite (the tickets' database behaviour is tested on both
    backends in tests/console), re-checking consoles every half second."""
    with running_control_plane(data_dir, f"sqlite:///{data_dir.parent}/gameplane.db",
                               **{"console_check_interval": "0.5", **settings}) as cp:
        yield cp


def running(cp: ControlPlane, name: str, template: str = "chatty") -> str:
    sid = cp.create(name, template)["id"]
    cp.wait_phase(sid, "stopped")
    assert cp.power(sid, "start").status_code == 202
    cp.wait_phase(sid, "running")
    return sid


def chatty_end(n: int) -> str:
    return f"line {n - 1} of {n} "


def lines_until(console: Console, last_line: str, timeout: float = 30) -> list[Frame]:
    return console.until(lambda f: f["type"] == "output" and (
        f.get("line", "").startswith(last_line) or any(x.startswith(last_line) for x in f.get("lines", []))),
        timeout)


def assert_exactly_once(frames: list[Frame], first: int) -> int:
    """Every sequence number from ``first`` on is delivered once or inside a gap frame,
    in order; returns the last one."""
    seqs = [seq for seq, _ in output_lines(frames)]
    covered = list(seqs)
    for gap in (f for f in frames if f["type"] == "gap"):
        covered += range(gap["from"], gap["to"] + 1)
    assert seqs == sorted(set(seqs)), "no line twice, in order"
    assert sorted(covered) == list(range(first, max(covered) + 1)), "no line lost without a gap frame"
    return max(covered)


def test_a_command_typed_in_the_console_shows_its_output(data_dir: Path) -> None:
    if not shutil.which("freeciv-server", path="/usr/games"):
        pytest.skip("freeciv-server is not installed")
    with plane(data_dir) as cp:
        sid = running(cp, "civ", "freeciv")
        console = open_console(cp, sid)
        status = console.recv()
        assert status["type"] == "status" and status["phase"] == "running"
        console.command("show timeout")
        frames = console.until(lambda f: f["type"] == "ack")
        ack = frames[-1]["seq"]
        answer = console.until(lambda f: f["type"] == "output" and "timeout" in f["line"].lower())
        assert all(f["seq"] > ack for f in answer if f["type"] == "output"), "the answer follows the ack"
        console.command("")
        error = console.until(lambda f: f["type"] == "error")[-1]
        assert error["error"] == "invalid_command", "the agent's refusal passes through"
        # The same console in batch frames, resumed from before the command.
        batch = open_console(cp, sid, since=ack, batch=True).until(lambda f: f["type"] == "output")[-1]
        assert batch["seq"] == ack + 1 and "line" not in batch
        per_line = [f["line"] for f in answer if f["type"] == "output"]
        assert batch["lines"][:len(per_line)] == per_line[:len(batch["lines"])]


def test_tickets_are_bound_single_use_and_expire(data_dir: Path) -> None:
    with plane(data_dir, console_ticket_ttl="5") as cp:
        sid = running(cp, "one")
        other = running(cp, "two")

        def refusal(server: str = sid, **kw: object) -> tuple[int | None, str]:
            code, frames = open_console(cp, server, **kw).closed()  # type: ignore[arg-type]
            assert frames[-1]["type"] == "error", frames
            return code, frames[-1]["error"]

        # Cross-site websocket hijacking: another site's page is refused before the handshake.
        t = ticket(cp, sid)
        with pytest.raises(InvalidStatus) as caught:
            connect(t["url"], origin="https://evil.example")  # type: ignore[arg-type]
        assert caught.value.response.status_code == 403
        assert json.loads(caught.value.response.body or b"")["error"] == "forbidden_origin"
        # The refusal did not use the ticket up; a client sending no Origin is no browser page.
        with connect(t["url"]) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "status"
        assert refusal(ticket_value=t["ticket"]) == (4401, "ticket_used")
        assert refusal(other, ticket_value=ticket(cp, sid)["ticket"]) == (4401, "invalid_ticket")
        assert refusal(ticket_value="x" * 43) == (4401, "invalid_ticket")
        assert refusal(ticket_value="") == (4401, "ticket_required")
        # A bad query is refused before the ticket is used.
        t = ticket(cp, sid)
        with connect(t["url"] + "&since=-1", origin=cp.url) as ws:  # type: ignore[arg-type]
            assert json.loads(ws.recv(timeout=10))["error"] == "invalid_since"
            with pytest.raises(Exception, match="4400"):
                ws.recv(timeout=10)
        open_console(cp, sid, ticket_value=t["ticket"]).recv()
        late = ticket(cp, sid)["ticket"]
        time.sleep(5.5)
        assert refusal(ticket_value=late) == (4401, "ticket_expired")
        # Another user gets no ticket for it (404, as on every route of another user's server).
        b_account = {"email": "b@example.com", "password": "long enough password"}
        assert cp.request("POST", "/api/auth/register", json=b_account).status_code == 201
        b = cp.request("POST", "/api/auth/login", json=b_account).json()
        r = cp.request("POST", f"/api/game/servers/{sid}/console/ticket",
                       headers={"Authorization": f"Bearer {b['accessToken']}"})
        assert r.status_code == 404 and r.json()["error"] == "not_found"


def kill_agent_while_streaming(cp: ControlPlane, console: Console, first: int) -> int:
    """Kill the node agent while 20,000 lines stream to ``console``, wait for the
    provider to start it again, and send one more command that only the new agent
    can carry. Every line from ``first`` on arrives once; the last seq."""
    console.command("20000")
    frames = console.until(lambda f: f["type"] == "ack")
    agent = cp.agent_process()
    assert agent is not None
    agent.kill()
    frames += lines_until(console, chatty_end(20000), timeout=40)
    deadline = time.monotonic() + 20  # the lines may all have been out before the kill
    while (again := cp.agent_process()) is None or again.pid == agent.pid:
        assert time.monotonic() < deadline, "the provider did not start the agent again"
        time.sleep(0.1)
    console.command("10")
    frames += lines_until(console, chatty_end(10), timeout=40)
    assert console.ws.close_code is None, "the browser's socket stayed open throughout"
    return assert_exactly_once(frames, first)


def test_resume_loses_and_repeats_nothing_across_drops_and_restarts(data_dir: Path) -> None:
    with plane(data_dir) as cp:
        sid = running(cp, "resumable")
        first = open_console(cp, sid)
        first.command("300")
        frames = first.until(lambda f: f["type"] == "output" and f["seq"] == 150)
        first.close()  # the browser drops in the middle of the output
        start = output_lines(frames)[0][0]
        second = open_console(cp, sid, since=150)
        frames += lines_until(second, chatty_end(300))
        last = assert_exactly_once(frames, start)
        assert not [f for f in frames if f["type"] == "gap"]
        second.close()

        # The node agent dies while lines stream; the API reconnects to the agent the
        # provider starts again and resumes from the last line it passed on. In batch
        # frames, which the proxy passes through unparsed until it must resume.
        third = open_console(cp, sid, since=last, batch=True)
        last = kill_agent_while_streaming(cp, third, last + 1)
        third.close()

        cp.sigkill()  # the API dies with nothing to say; the new one knows no connection
        cp.start()
        fourth = open_console(cp, sid, since=last)
        fourth.command("200")
        resumed = lines_until(fourth, chatty_end(200))
        assert output_lines(resumed)[0][0] == last + 1
        last = assert_exactly_once(resumed, last + 1)

        # The agent dies under the new API, which found it running (not its child):
        # the provider starts it again all the same, and the console resumes.
        kill_agent_while_streaming(cp, fourth, last + 1)


def test_an_agent_that_stays_away_ends_the_console_with_4502(data_dir: Path) -> None:
    """Retrying the agent for one second only: a dead agent (the provider restarts it
    after 3.5 s) and a hung one (accepts, never answers) both end the console."""
    with plane(data_dir, console_upstream_retry="1") as cp:
        sid = running(cp, "lonely")
        console = open_console(cp, sid)
        console.recv()
        agent = cp.agent_process()
        assert agent is not None
        t0 = time.monotonic()
        agent.kill()
        code, frames = console.closed()
        assert (code, frames[-1]["error"]) == (4502, "agent_unreachable")
        assert time.monotonic() - t0 < 4
        cp.wait_phase(sid, "running", timeout=30)
        hung = cp.agent_process()
        assert hung is not None
        hung.suspend()
        try:
            t0 = time.monotonic()
            code, frames = open_console(cp, sid).closed()
            assert (code, frames[-1]["error"]) == (4502, "agent_unreachable")
            assert time.monotonic() - t0 < 4
        finally:
            hung.resume()
        back = open_console(cp, sid, since=0)
        assert back.until(lambda f: f["type"] == "output")[-1]["line"] == "ready", "and it comes back"


def test_browser_frames_are_checked_and_commands_rate_limited(data_dir: Path) -> None:
    with plane(data_dir, console_command_rate="1", console_command_burst="3") as cp:
        sid = running(cp, "limited")
        console = open_console(cp, sid)
        console.recv()
        for _ in range(5):
            console.command("1")
        kinds: list[str] = []
        while kinds.count("ack") + kinds.count("throttled") < 5:
            frame = console.recv()
            kinds.append(frame["type"])
            assert frame["type"] != "throttled" or 0 < frame["retryAfter"] <= 1
        assert (kinds.count("ack"), kinds.count("throttled")) == (3, 2), "a burst of 3, then throttled"
        for bad, code in (("{not json", "invalid_json"), (json.dumps({"type": "hello"}), "invalid_frame"),
                          ("[1]", "invalid_frame"), ("x" * 9000, "frame_too_large"),
                          (b"\x00binary", "invalid_frame")):
            console.ws.send(bad)
            assert console.until(lambda f: f["type"] == "error")[-1]["error"] == code, bad
        time.sleep(1.1)
        console.command("two\nlines")
        assert console.until(lambda f: f["type"] == "error")[-1]["error"] == "invalid_command"
        time.sleep(1.1)
        console.command("2")
        assert lines_until(console, chatty_end(2)), "the connection survived it all"


def test_a_console_closes_within_seconds_when_access_ends(data_dir: Path) -> None:
    with plane(data_dir) as cp:
        suspended, deleted, kept = running(cp, "suspended"), running(cp, "deleted"), running(cp, "kept")
        consoles = {sid: open_console(cp, sid) for sid in (suspended, deleted, kept)}

        db = sqlite3.connect(data_dir.parent / "gameplane.db", timeout=10)
        with db:
            db.execute("UPDATE instances SET lifecycle = 'suspended' WHERE id = ?", (suspended,))
        db.close()
        t0 = time.monotonic()
        code, frames = consoles[suspended].closed()
        assert (code, frames[-1]["error"]) == (4409, "instance_suspended")
        assert time.monotonic() - t0 < 3

        deleting = threading.Thread(target=cp.request, args=("DELETE", f"/api/game/servers/{deleted}"))
        t0 = time.monotonic()
        deleting.start()
        code, frames = consoles[deleted].closed()
        deleting.join()
        assert code in (4404, 4409) and frames[-1]["type"] == "error"
        assert time.monotonic() - t0 < 5

        t0 = time.monotonic()
        assert cp.request("POST", "/api/auth/logout-all").status_code == 204
        code, frames = consoles[kept].closed()
        assert (code, frames[-1]["error"]) == (4401, "session_ended")
        assert time.monotonic() - t0 < 3


def test_token_expiring_then_reauth_or_close(data_dir: Path) -> None:
    """Access tokens live 30 s here; ``token_expiring`` comes 27 s before."""
    with plane(data_dir, access_token_ttl="30", console_expiry_warning="27") as cp:
        sid = running(cp, "expiring")
        t0 = time.monotonic()
        extended, ending = open_console(cp, sid), open_console(cp, sid)
        for console in (extended, ending):
            warning = console.until(lambda f: f["type"] == "token_expiring", 10)[-1]
            assert warning["expiresAt"].endswith("Z") and time.monotonic() - t0 < 6
        extended.send({"type": "reauth", "ticket": "forged"})
        assert extended.until(lambda f: f["type"] == "error")[-1]["error"] == "invalid_ticket"
        cp.login()  # a new access token, as the portal's refresh would get
        extended.send({"type": "reauth", "ticket": ticket(cp, sid)["ticket"]})
        reauthed = extended.until(lambda f: f["type"] == "reauthed")[-1]
        assert reauthed["expiresAt"] > warning["expiresAt"]
        code, frames = ending.closed(timeout=35)
        assert (code, frames[-1]["error"]) == (4401, "token_expired")
        assert 28 < time.monotonic() - t0 < 40
        extended.command("1")
        assert lines_until(extended, chatty_end(1)), "the reauthorized console lives on"


@pytest.mark.parametrize("batch", [False, True], ids=["per-line", "batch"])
def test_a_slow_reader_costs_the_api_bounded_memory_and_gets_a_gap(data_dir: Path, batch: bool) -> None:
    """In batch frames the proxy also merges the frames a slow reader left queued."""
    with plane(data_dir) as cp:
        sid = running(cp, "flood")
        assert cp.proc is not None
        api = psutil.Process(cp.proc.pid)
        console = open_console(cp, sid, batch=batch)
        start = console.until(lambda f: f["type"] == "output")[-1]["seq"]
        rss_before = api.memory_info().rss
        total = 300_000  # ~20 MB of lines; the reader reads none of them for now
        console.command(str(total))
        peak = rss_before
        for _ in range(40):
            time.sleep(0.1)
            peak = max(peak, api.memory_info().rss)
        frames = lines_until(console, chatty_end(total), timeout=60)
        assert [f for f in frames if f["type"] == "gap"], "the reader is told what it missed"
        assert_exactly_once(frames, start + 1)
        for seq, line in output_lines(frames):
            assert line.startswith(f"line {seq - start - 1} of {total} "), (seq, line)
        assert peak - rss_before < 32 * 2**20, f"the API grew by {(peak - rss_before) / 2**20:.0f} MiB"
