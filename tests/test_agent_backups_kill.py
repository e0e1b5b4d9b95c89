"""An agent killed at any moment of a restore leaves the data dir wholly old
or wholly new, never mixed or empty, and the next agent cleans up.

The agent is paused (SIGSTOP, via GAMEPLANE_TEST_PAUSE_AT) at named points
of the restore and then SIGKILLed there; one more run kills it at a random
moment of a large extraction."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from gameplane.agent.backups.swap import NO_EXCHANGE_ENV, PAUSE_ENV
from tests.agentctl import Agent, kill_workloads
from tests.backupctl import BOX, backup, data_of, tree, write_world
from tests.conftest import TOKEN


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def _prepare(data_dir: Path, big: int) -> tuple[Agent, str, dict[str, str], dict[str, str]]:
    agent = Agent(data_dir, TOKEN, BOX).start()
    c = agent.client()
    data = data_of(data_dir)
    write_world(data, "old", big=big)
    made = backup(c)["id"]
    new_world = tree(data)  # what the restore brings back
    write_world(data, "current")
    (data / "world/only-in-current").write_text("x")
    (data / "world/big.bin").unlink(missing_ok=True)
    c.post("/start")
    c.wait_phase("running")
    return agent, made, new_world, tree(data)


def _check_after_restart(agent: Agent, data_dir: Path, expect: str | None,
                         old: dict[str, str], new: dict[str, str]) -> None:
    os.environ.pop(PAUSE_ENV, None)
    os.environ.pop(NO_EXCHANGE_ENV, None)
    agent.start()
    c = agent.client()
    status = c.wait_phase("running", 20)  # it was running: started again after recovery
    data = data_of(data_dir)
    world = tree(data)
    # conf.txt (not backed up) is kept either way; the server's save writes world/saved.
    world = {k: v for k, v in world.items() if k != "world/saved"}
    old = {k: v for k, v in old.items() if k != "world/saved"}
    new = {k: v for k, v in new.items() if k != "world/saved"}
    assert world in (old, new), "neither the old nor the new world"
    if expect is not None:
        assert world == (old if expect == "old" else new), f"expected the {expect} world"
    assert not list(data.parent.glob(".restore-*")) and not (data.parent / "run/restore.json").exists()
    assert status["progress"]["status"] == "interrupted"
    assert c.get("/ready").status_code == 200


@pytest.mark.parametrize(("point", "exchange", "expect"), [
    ("after_extract", True, "old"),
    ("after_verify", True, "old"),
    ("before_swap", True, None),  # journal says verified: either whole world is right
    ("after_swap", True, "new"),
    ("before_swap", False, None),
    ("mid_swap", False, "new"),  # data/ is missing here: recovery rolls forward
    ("after_swap", False, "new"),
])
def test_agent_killed_at_a_point_of_the_restore(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                point: str, exchange: bool, expect: str | None) -> None:
    agent, made, new, old = _prepare(data_dir, big=1 << 20)
    try:
        agent.terminate()
        monkeypatch.setenv(PAUSE_ENV, point)
        if not exchange:
            monkeypatch.setenv(NO_EXCHANGE_ENV, "1")
        agent.start()
        c = agent.client()
        assert c.post(f"/backups/restore?id={made}").status_code == 202
        assert agent.proc is not None
        deadline = time.monotonic() + 30
        while not _stopped(agent.proc.pid):
            assert time.monotonic() < deadline, f"never reached {point}"
            time.sleep(0.02)
        agent.sigkill()
        if point == "mid_swap":
            assert not data_of(data_dir).exists(), "the two-rename swap really was cut"
        _check_after_restart(agent, data_dir, expect, old, new)
    finally:
        agent.terminate()
        kill_workloads(data_dir)


def test_agent_killed_at_random_moments_of_a_large_restore(data_dir: Path) -> None:
    agent, made, new, old = _prepare(data_dir, big=300 << 20)
    try:
        for attempt in range(3):
            c = agent.client()
            assert c.post(f"/backups/restore?id={made}").status_code == 202, attempt
            c.wait(lambda s: (s["progress"] or {}).get("stage") == "extracting", 60, "extraction")
            time.sleep(random.uniform(0, 0.8))
            agent.sigkill()
            _check_after_restart(agent, data_dir, None, old, new)
            old = tree(data_of(data_dir))  # whatever survived is the old world of the next round
    finally:
        agent.terminate()
        kill_workloads(data_dir)
