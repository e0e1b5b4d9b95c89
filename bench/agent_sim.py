"""A light agent-contract simulator: one process answering ``/i/<id>/health``,
``/i/<id>/ready`` and ``/i/<id>/status`` for N instances, like a node agent
would, so the control plane's poller can be measured against thousands of
instances without thousands of real agents.

It is load, not the subject: a raw ``asyncio.Protocol`` speaking just enough
HTTP/1.1 (keep-alive, GET, ``Content-Length`` bodies skipped), every answer
pre-rendered per instance, on uvloop when it is installed. It checks the
instance bearer token (one token for all instances) on every route but
``/health``, as the real agent does.

- ``--not-ready-every K``: every K-th instance answers ``/ready`` with
  ``503 {"ready": false, "reason": "not installed"}`` and phase ``stopped``.
- Unknown instance ids answer ``404 {"error": "not_found", ...}``.
- ``GET /_sim/stats`` (no auth) answers the number of requests served.

Run: ``.venv/bin/python bench/agent_sim.py --instances 5000 --port 18080``
(prints ``listening on 127.0.0.1:PORT`` once it accepts connections).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

DEFAULT_TOKEN = "bench-instance-token"


def _response(status: int, body: object, reason: str = "") -> bytes:
    reasons = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
               503: "Service Unavailable"}
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {reason or reasons.get(status, 'OK')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n")
    return head.encode() + data


def _status_body(instance_id: str, ready: bool) -> dict[str, object]:
    # Shaped like the real agent's /status (docs/agent.md), about 600 bytes.
    phase = "running" if ready else "stopped"
    return {
        "instanceId": instance_id, "template": "benchsim", "kind": "game", "phase": phase,
        "reason": None, "since": 1795681523.38, "seq": 4, "busy": None,
        "pid": 6133 if ready else None, "exitCode": None, "restarts": 0,
        "startedAt": 1795681522.78 if ready else None, "consoleSeq": 77,
        "probes": {"log": {"passed": ready, "detail": "matched: ready", "at": 1795681523.38}},
        "ports": {"game": 30000},
        "resources": {"cpuPercent": 1.5, "memoryBytes": 37322752, "processes": 3, "diskBytes": 4096},
        "sandbox": {"bwrap": True, "cgroups": True, "uid": 300000},
    }


class Routes:
    """Pre-rendered answers: one dict lookup per request."""

    def __init__(self, instances: int, token: str, not_ready_every: int):
        self.auth = b"bearer " + token.encode()
        self.health = _response(200, {"status": "ok"})
        self.unauthorized = _response(401, {"error": "invalid_token", "details": {"reason": "bad token"}})
        self.not_found = _response(404, {"error": "not_found", "details": None})
        self.not_allowed = _response(405, {"error": "method_not_allowed", "details": None})
        self.served = 0
        self.table: dict[bytes, tuple[bytes, bytes]] = {}
        for n in range(instances):
            iid = f"sim-{n}"
            ready = not (not_ready_every and n % not_ready_every == not_ready_every - 1)
            ready_body = (_response(200, {"ready": True, "phase": "running", "busy": None, "seq": 4})
                          if ready else _response(503, {"ready": False, "reason": "not installed"}))
            self.table[f"/i/{iid}".encode()] = (ready_body, _response(200, _status_body(iid, ready)))

    def answer(self, method: bytes, path: bytes, head: bytes) -> bytes:
        self.served += 1
        if path == b"/_sim/stats":
            return _response(200, {"served": self.served})
        base, _, route = path.rpartition(b"/")
        entry = self.table.get(base)
        if entry is None:
            return self.not_found
        if method != b"GET":
            return self.not_allowed
        if route == b"health":
            return self.health
        if self.auth not in head.lower():
            return self.unauthorized
        if route == b"ready":
            return entry[0]
        if route == b"status":
            return entry[1]
        return self.not_found


class HTTPProtocol(asyncio.Protocol):
    def __init__(self, routes: Routes):
        self.routes = routes
        self.buffer = b""
        self.skip = 0  # request body bytes still to discard
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        close = False
        while True:
            if self.skip:
                taken = min(self.skip, len(buf))
                buf, self.skip = buf[taken:], self.skip - taken
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end], buf[end + 4:]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                close = True
                break
            method, target = parts[0], parts[1]
            lower = head.lower()
            marker = lower.find(b"\r\ncontent-length:")
            if marker >= 0:
                value_end = lower.find(b"\r\n", marker + 2)
                with contextlib.suppress(ValueError):
                    self.skip = int(lower[marker + 17:value_end if value_end >= 0 else None])
            out.append(self.routes.answer(method, target.split(b"?", 1)[0], head))
            if b"\r\nconnection: close" in lower:
                close = True
                break
        self.buffer = buf
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self.transport.close()


async def serve(host: str, port: int, routes: Routes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HTTPProtocol(routes), host, port, backlog=4096,
                                      reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--not-ready-every", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args(argv)
    routes = Routes(args.instances, args.token, args.not_ready_every)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, routes))
    sys.exit(0)


if __name__ == "__main__":
    main()
