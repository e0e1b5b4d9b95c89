"""The console websocket under load: a reader that stops reading never blocks
the workload or the agent, costs bounded memory, and is told what it missed."""

from __future__ import annotations

import json
import time

import psutil

from tests.agentctl import Agent


def test_a_slow_reader_gets_a_gap_marker_and_bounded_memory(node: Agent) -> None:
    r = node.client().post("/instances", {"id": "chat", "template": "chatty", "tokenHash": "tc"})
    assert r.status_code == 201
    c = node.client("/i/chat", "tc")
    c.post("/start")
    start_seq = c.wait_phase("running")["consoleSeq"]
    agent = psutil.Process(node.proc.pid)  # type: ignore[union-attr]
    rss_before = agent.memory_info().rss
    total = 300_000
    with c.ws(since=start_seq) as ws:
        assert c.command(str(total)).status_code == 202
        # Do not read while the workload writes ~20 MB of lines.
        end = start_seq + total
        c.wait(lambda s: s["consoleSeq"] >= end, 60, "all lines written")
        rss_peak = agent.memory_info().rss
        frames = []
        while True:
            frame = json.loads(ws.recv(timeout=10))
            frames.append(frame)
            if frame.get("seq") == end:
                break
    outputs = [f for f in frames if f["type"] == "output"]
    gaps = [f for f in frames if f["type"] == "gap"]
    assert gaps, "lines the reader could no longer get are announced"
    # Every line is either delivered once or inside a gap: no loss goes unsaid, nothing repeats.
    covered = [f["seq"] for f in outputs]
    for g in gaps:
        covered += range(g["from"], g["to"] + 1)
    assert sorted(covered) == list(range(start_seq + 1, end + 1))
    assert [f["seq"] for f in outputs] == sorted({f["seq"] for f in outputs})
    assert rss_peak - rss_before < 64 * 2**20, "a stalled reader must not grow the agent's memory"


def test_the_workload_is_never_slowed_by_a_stalled_reader(node: Agent) -> None:
    node.client().post("/instances", {"id": "chat2", "template": "chatty", "tokenHash": "tc"})
    c = node.client("/i/chat2", "tc")
    c.post("/start")
    seq = c.wait_phase("running")["consoleSeq"]
    with c.ws(since=seq):
        t0 = time.monotonic()
        c.command("200000")
        c.wait(lambda s: s["consoleSeq"] >= seq + 200_000, 60, "lines written")
        stalled = time.monotonic() - t0
    seq = c.status()["consoleSeq"]
    t0 = time.monotonic()
    c.command("200000")
    c.wait(lambda s: s["consoleSeq"] >= seq + 200_000, 60, "lines written")
    alone = time.monotonic() - t0
    assert stalled < alone * 3 + 1, (stalled, alone)


def test_batch_frames_carry_consecutive_lines(node: Agent) -> None:
    node.client().post("/instances", {"id": "chat3", "template": "chatty", "tokenHash": "tc"})
    c = node.client("/i/chat3", "tc")
    c.post("/start")
    seq = c.wait_phase("running")["consoleSeq"]
    c.command("700")
    end = seq + 700
    c.wait(lambda s: s["consoleSeq"] >= end, 20, "lines written")
    url = c.url.replace("http://", "ws://") + f"/console/ws?since={seq}&batch=1"
    from websockets.sync.client import connect

    got: list[str] = []
    with connect(url, additional_headers=c.headers) as ws:
        while len(got) < 700:
            frame = json.loads(ws.recv(timeout=10))
            if frame["type"] == "output":
                assert frame["seq"] == seq + 1 + len(got), "batches are consecutive"
                got += frame["lines"]
    assert got[0].startswith("line 0 of 700") and got[-1].startswith("line 699 of 700")


def test_replaying_a_large_backlog_leaves_the_agent_responsive(node: Agent) -> None:
    node.client().post("/instances", {"id": "big", "template": "chatty-big", "tokenHash": "tb"})
    c = node.client("/i/big", "tb")
    c.post("/start")
    seq = c.wait_phase("running")["consoleSeq"]
    c.command("250000")
    c.wait(lambda s: s["consoleSeq"] >= seq + 250_000, 60, "lines written")
    from websockets.sync.client import connect

    url = c.url.replace("http://", "ws://") + "/console/ws?since=0"
    # An unbounded client queue: the reader takes frames as fast as they come.
    with connect(url, additional_headers=c.headers, max_queue=None):
        # The agent now replays 250,000 lines into a socket that takes everything.
        time.sleep(0.2)
        worst = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            assert node.client().get("/health").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)
    assert worst < 1.0, f"/health took {worst:.2f}s during a replay"
