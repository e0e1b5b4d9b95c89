"""Upload throughput: a file streamed through the API's upload proxy against
the same file sent straight to the agent, in one run.

``gameplane up`` (API + its local node agent, started as the tests do:
``tests/controlplane.py``) hosts one server of the
``backupbox`` test template. Each round uploads ``--size`` bytes (2 GiB by
default) with ``Content-Length`` twice, alternating which goes first:

* direct: ``PUT <agent>/i/<id>/files?path=`` with the instance token;
* API: ``PUT <api>/api/game/servers/<id>/files?path=`` with the admin's token.

The client is a raw socket writing one pre-made 1 MiB block over and over
(no per-chunk work, so it is not the bottleneck of either path); the time
runs from the first byte to the agent's ``201``. Best of ``--reps`` rounds
per path. Meanwhile the API process's VmRSS is sampled every 5 ms; the
growth is the peak minus the RSS just before the upload.

Floors of the issue: API/direct throughput at least 0.8; the API's peak RSS
growth while streaming under 32 MB. Prints ``SUMMARY upload_throughput: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.controlplane import ControlPlane
from tests.filesctl import PeakRss

from _harness import cpu_seconds, mb, temp_dir

MiB = 1 << 20
RATIO_FLOOR = 0.8
RSS_FLOOR = 32 * MiB


def new_server(cp: ControlPlane) -> tuple[str, str, str]:
    """A new stopped server: its id, its agent base URL and its instance token."""
    sid = cp.create("bench", template="backupbox")["id"]
    cp.wait_phase(sid, "stopped", timeout=60)
    with sqlite3.connect(cp.data_dir / "gameplane.db") as db:
        url, token = db.execute("SELECT agent_url, agent_token FROM instances WHERE id = ?",
                                (sid,)).fetchone()
    return sid, url, token


def upload(url: str, token: str, size: int, block: bytes) -> float:
    """Seconds from the first byte to the ``201``."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    head = (f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    view = memoryview(block)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        started = time.perf_counter()
        sock.sendall(head)
        left = size
        while left:
            n = min(left, len(view))
            sock.sendall(view[:n])
            left -= n
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
        elapsed = time.perf_counter() - started
    status = answer.split(b" ", 2)[1] if answer else b"none"
    if status != b"201":
        raise RuntimeError(f"upload to {url} answered {answer[:400]!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="MiB per upload (default 2048)")
    parser.add_argument("--reps", type=int, default=3, help="rounds; best of each path is kept")
    args = parser.parse_args()
    size = args.size * MiB
    block = os.urandom(MiB)
    with temp_dir("gameplane-bench-upload-") as workdir:
        cp = ControlPlane(workdir / "cp", f"sqlite:///{workdir / 'cp' / 'gameplane.db'}").start()
        try:
            assert cp.proc is not None
            sid, agent_url, token = new_server(cp)
            agent = cp.agent_process()
            assert agent is not None
            agent_pid = agent.pid
            data = workdir / "cp" / "agent" / "instances" / sid / "data"
            targets = {
                "direct": (f"{agent_url}/files?path=direct.bin", token),
                "api": (f"{cp.url}/api/game/servers/{sid}/files?path=api.bin",
                        cp.headers["Authorization"].split()[1]),
            }
            upload(targets["api"][0], targets["api"][1], 8 * MiB, block)  # warm-up
            best = {"direct": float("inf"), "api": float("inf")}
            growth = 0
            for rep in range(args.reps):
                order = ["direct", "api"] if rep % 2 == 0 else ["api", "direct"]
                for name in order:
                    sampler = PeakRss(cp.proc.pid)
                    sampler.start()
                    cpu_before = cpu_seconds(cp.proc.pid), cpu_seconds(agent_pid)
                    seconds = upload(*targets[name], size, block)
                    grown = sampler.growth()
                    cpu = cpu_seconds(cp.proc.pid) - cpu_before[0], cpu_seconds(agent_pid) - cpu_before[1]
                    if name == "api":
                        growth = max(growth, grown)
                    best[name] = min(best[name], seconds)
                    print(f"round {rep + 1} {name:6s} {size / seconds / MiB:8.1f} MiB/s "
                          f"({seconds:.2f} s); CPU s: API {cpu[0]:.2f}, agent {cpu[1]:.2f}; "
                          f"API RSS growth {mb(grown):.1f} MiB", flush=True)
                    for leftover in data.glob("*.bin"):
                        leftover.unlink()
        finally:
            cp.cleanup()
    rate = {name: size / seconds / MiB for name, seconds in best.items()}
    ratio = rate["api"] / rate["direct"]
    ok = ratio >= RATIO_FLOOR and growth < RSS_FLOOR
    print(json.dumps({"sizeMiB": args.size, "reps": args.reps, "directMiBs": round(rate["direct"], 1),
                      "apiMiBs": round(rate["api"], 1), "ratio": round(ratio, 3),
                      "apiPeakRssGrowthMiB": round(mb(growth), 1),
                      "loadAverage": [round(x, 2) for x in os.getloadavg()]}))
    print(f"SUMMARY upload_throughput: {args.size} MiB, best of {args.reps}: direct "
          f"{rate['direct']:.0f} MiB/s, through the API {rate['api']:.0f} MiB/s, ratio {ratio:.2f} "
          f"(floor {RATIO_FLOOR}); API peak RSS growth {mb(growth):.1f} MiB (floor < {mb(RSS_FLOOR):.0f}) "
          f"{'OK' if ok else 'BELOW FLOOR'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
