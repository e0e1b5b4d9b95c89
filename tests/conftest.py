from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentctl import TEMPLATES, Agent, free_port, running_agent

pytest_plugins = ["tests.dbfixtures"]

TOKEN = "test-token-for-instance"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the agent tests switch to per-instance uids: run as root")
        for item in items:
            if "agent" in item.fixturenames or "node" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An agent data dir the workload users can reach (pytest's tmp root is 0700)."""
    base = Path("/tmp/gameplane-tests")
    base.mkdir(mode=0o711, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    os.chmod(path, 0o711)  # noqa: S103
    yield path / "agent"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def game_port() -> int:
    return free_port()


@pytest.fixture
def freeciv(data_dir: Path, game_port: int) -> Iterator[Agent]:
    if not shutil.which("freeciv-server", path="/usr/games"):
        pytest.skip("freeciv-server is not installed")
    args = ["--template", "freeciv", "--var", "bind_address=127.0.0.1", "--port", f"game={game_port}"]
    with running_agent(data_dir, TOKEN, args) as agent:
        yield agent


@pytest.fixture
def node(data_dir: Path) -> Iterator[Agent]:
    with running_agent(data_dir, "node-token", ["--node", "--templates-dir", str(TEMPLATES)]) as agent:
        yield agent
