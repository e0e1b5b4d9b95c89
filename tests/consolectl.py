"""Test helpers: a console websocket through the API, as a browser script would
use it (ticket first, then the socket), read frame by frame."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.controlplane import ControlPlane

Frame = dict[str, Any]


def ticket(cp: ControlPlane, server_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = cp.request("POST", f"/api/game/servers/{server_id}/console/ticket", headers=headers or {})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


class Console:
    def __init__(self, ws: ClientConnection):
        self.ws = ws

    def send(self, frame: Frame | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def command(self, command: str) -> None:
        self.send({"type": "command", "command": command})

    def recv(self, timeout: float = 10) -> Frame:
        frame: Frame = json.loads(self.ws.recv(timeout=timeout))
        return frame

    def until(self, done: Callable[[Frame], bool], timeout: float = 20) -> list[Frame]:
        """Frames up to and including the first for which ``done`` holds."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such frame within {timeout}s; last: {frames[-5:]}")
            frames.append(self.recv(left))
            if done(frames[-1]):
                return frames

    def closed(self, timeout: float = 10) -> tuple[int | None, list[Frame]]:
        """Read until the API closes the socket: the close code and the frames before it."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                frames.append(self.recv(deadline - time.monotonic()))
        except (ConnectionClosed, TimeoutError):
            pass
        assert self.ws.close_code is not None, f"still open after {timeout}s: {frames[-5:]}"
        return self.ws.close_code, frames

    def close(self) -> None:
        self.ws.close()


def open_console(cp: ControlPlane, server_id: str, *, since: int | None = None, batch: bool = False,
                 ticket_value: str | None = None, origin: str | None = None,
                 headers: dict[str, str] | None = None) -> Console:
    """Connect with a fresh ticket (or ``ticket_value``), sending the API's own Origin
    as a browser on the portal would (or ``origin``)."""
    url = ticket(cp, server_id, headers)["url"] if ticket_value is None else \
        f"{cp.url.replace('http', 'ws', 1)}/api/game/servers/{server_id}/console?ticket={ticket_value}"
    if since is not None:
        url += f"&since={since}"
    if batch:
        url += "&batch=1"
    # Entered here and closed by the test (or the API): consoles outlive one with-block.
    ws = connect(url, origin=origin or cp.url, open_timeout=10, max_size=None)  # type: ignore[arg-type]
    return Console(ws.__enter__())


def output_lines(frames: list[Frame]) -> list[tuple[int, str]]:
    """(seq, line) of every line in output frames, per-line or batch."""
    lines = []
    for f in frames:
        if f["type"] == "output":
            lines += [(f["seq"] + i, line) for i, line in enumerate(f["lines"])] if "lines" in f \
                else [(f["seq"], f["line"])]
    return lines
