"""A real freeciv game backed up while it runs, restored, and loaded again."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from tests.agentctl import Agent, Client, free_port
from tests.backupctl import backup, data_of, restore, tree

pytestmark = pytest.mark.slow
_PLAYER = re.compile(r"^(\S.*?) \[#[0-9a-f]{6}\]")


def _players(lines: list[str]) -> set[str]:
    return {m.group(1) for line in lines if (m := _PLAYER.match(line))}


def _console_players(c: Client) -> set[str]:
    seq = c.status()["consoleSeq"]
    assert c.command("list").status_code == 202
    time.sleep(1)
    with c.ws(since=seq) as ws:
        lines = []
        while True:
            try:
                frame = json.loads(ws.recv(timeout=1))
            except TimeoutError:
                break
            if frame["type"] == "output":
                lines.append(frame["line"])
    return _players(lines)


def _archive_saves(blob: bytes) -> dict[str, str]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob))
    out = {}
    with tarfile.open(fileobj=raw, mode="r|") as tar:
        for m in tar:
            if m.name.startswith("saves/") and m.isreg():
                data = tar.extractfile(m)
                assert data is not None
                out[m.name.removeprefix("saves/")] = hashlib.sha256(data.read()).hexdigest()
    return out


def test_running_game_backed_up_restored_and_loaded(freeciv: Agent, data_dir: Path) -> None:
    c = freeciv.client()
    c.post("/start")
    c.wait_phase("running")
    for command in ["set minplayers 0", "start"]:
        assert c.command(command).status_code == 202
    time.sleep(3)  # a few AI turns
    players = _console_players(c)
    assert len(players) >= 2, "a game with AI players runs"

    made = backup(c, "mid-game")  # the template's pre command `save` runs first
    blob = c.get(f"/backups/{made['id']}/download").content
    assert hashlib.sha256(blob).hexdigest() == made["sha256"]
    saved = _archive_saves(blob)
    assert any(name.endswith("-manual.sav.xz") for name in saved), f"`save` before the copy: {saved}"

    saves = data_of(data_dir) / "saves"
    c.command("save changed")
    time.sleep(1)
    for path in saves.glob("*-manual.sav.xz"):
        path.unlink()
    assert tree(saves) != saved

    progress = restore(c, made["id"], timeout=90)
    assert progress["status"] == "completed", progress
    status = c.wait_phase("running", 30)
    assert status["busy"] is None
    assert tree(saves) == saved, "the saves are exactly those of the backup"

    # The restored save loads: a server started from it has the same players.
    manual = next(saves.glob("*-manual.sav.xz"))
    port = free_port()
    uid = str(status["sandbox"]["uid"])
    done = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "env", f"HOME={data_dir}",
         "/usr/games/freeciv-server", "-p", str(port), "-b", "127.0.0.1", "-A", "none", "-d", "n",
         "-e", "-f", str(manual)],
        input="list\nquit\n", capture_output=True, text=True, timeout=60, check=False)
    loaded = _players([line.removeprefix("> ") for line in done.stdout.splitlines()])
    assert loaded == players, done.stdout[-2000:]
