"""Test helpers for the file routes, shared by the agent's and the API's tests:
the path-traversal corpus, the hazards planted in a data dir (symlinks out,
a FIFO, a socket), and raw HTTP over a socket for what an HTTP client will
not do (stop after the headers, hang up halfway through a body)."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil

#: (path as the client means it, expected status, expected error code) for every
#: route; a status of None means "the route's own refusal for a special file"
#: (see ``special_expectations``).
STRING_CORPUS: list[tuple[str, int, str]] = [
    ("../x", 400, "invalid_path"),
    ("../../etc/passwd", 400, "invalid_path"),
    ("/etc/passwd", 400, "invalid_path"),
    ("a/../../x", 400, "invalid_path"),
    ("world/../..", 400, "invalid_path"),
    ("x\x00y", 400, "invalid_path"),
    ("a\nb", 400, "invalid_path"),
    ("..\\x", 400, "invalid_path"),
    ("CON", 400, "invalid_path"),
    ("world/nul.txt", 400, "invalid_path"),
    ("COM1", 400, "invalid_path"),
    (".gameplane-upload-1234.tmp", 400, "invalid_path"),
    ("a" * 300, 400, "invalid_path"),
    ("x/" * 2100, 400, "invalid_path"),
    # planted by ``plant_hazards``
    ("out-etc", 400, "invalid_path"),
    ("out-etc/passwd", 400, "invalid_path"),
    ("out-dir", 400, "invalid_path"),
    ("out-dir/secret", 400, "invalid_path"),
    ("world/via-parent/x", 400, "invalid_path"),
    ("link-to-file", 400, "invalid_path"),
]
#: raw query strings whose decoding is a traversal: the server must decode then refuse
ENCODED_CORPUS = ["%2e%2e/x", "%2E%2E%2Fx", "%2fetc%2fpasswd", "a/%2e%2e/%2e%2e/x"]
SPECIAL = ["fifo", "sock"]
ROUTES = [("PUT", ""), ("GET", ""), ("GET", "/content"), ("DELETE", "")]
SECRET = "outside the data dir\n"


def special_expectation(method: str, suffix: str) -> tuple[int, str]:
    """A FIFO or socket: listing it is not a directory; anything else refuses a
    file that is not regular."""
    if method == "GET" and suffix == "":
        return 409, "not_a_directory"
    return 409, "not_a_regular_file"


def plant_hazards(data: Path, outside: Path) -> None:
    """What an untrusted workload could leave in its data dir."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret").write_text(SECRET)
    os.symlink("/etc", data / "out-etc")
    os.symlink(outside, data / "out-dir")
    os.symlink(outside / "secret", data / "link-to-file")
    (data / "world").mkdir(exist_ok=True)
    os.symlink(outside, data / "world" / "via-parent")
    os.mkfifo(data / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(data / "sock"))


def hazards_intact(data: Path, outside: Path, etc_passwd: bytes) -> None:
    """Nothing was written, removed or replaced through a hazard."""
    assert Path("/etc/passwd").read_bytes() == etc_passwd
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == SECRET
    for name in ("out-etc", "out-dir", "link-to-file", "world/via-parent"):
        assert (data / name).is_symlink(), name
    assert stat.S_ISFIFO(os.lstat(data / "fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(data / "sock").st_mode)
    assert not list(data.rglob(".gameplane-upload-*")), "a temp file was left behind"


def temp_files(data: Path) -> list[Path]:
    return list(data.rglob(".gameplane-upload-*"))


# -- raw HTTP ---------------------------------------------------------------------------------------
def _connect(url: str) -> tuple[socket.socket, str, str]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock, f"{parts.hostname}:{parts.port}", parts.path


def head_of(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    """Status and body of one response (skipping ``100 Continue``)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError(f"closed before a response: {data!r}")
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status == 100:
            data = rest
            continue
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length:
            more = sock.recv(65536)
            if not more:
                break
            rest += more
        return status, rest[:length]


def put_headers_only(url: str, query_path: str, headers: dict[str, str], length: int,
                     expect: bool = False) -> tuple[int, bytes]:
    """Send a PUT's headers declaring ``length`` bytes and no body at all: the
    answer must come anyway (a refusal before the first byte)."""
    sock, host, base = _connect(url)
    with sock:
        extra = {"Expect": "100-continue"} if expect else {}
        sock.sendall(head_of("PUT", f"{base}?path={quote(query_path, safe='')}", host,
                             {**headers, "Content-Length": str(length), **extra}))
        return read_response(sock)


def put_cut_off(url: str, query_path: str, headers: dict[str, str], length: int, send: int,
                chunked: bool = False) -> None:
    """Send ``send`` of ``length`` bytes, then hang up."""
    sock, host, base = _connect(url)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(length)}
    with sock:
        sock.sendall(head_of("PUT", f"{base}?path={quote(query_path, safe='')}", host,
                             {**headers, **framing}))
        block = b"z" * 65536
        sent = 0
        while sent < send:
            piece = block[:min(len(block), send - sent)]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
        time.sleep(0.2)  # let it arrive before the hang-up


def put_chunked(url: str, query_path: str, headers: dict[str, str], total: int) -> tuple[int | None, bytes]:
    """A chunked PUT of ``total`` bytes; the answer, or None if the server hung
    up before answering anything readable (it may cut a body short)."""
    sock, host, base = _connect(url)
    with sock:
        sock.sendall(head_of("PUT", f"{base}?path={quote(query_path, safe='')}", host,
                             {**headers, "Transfer-Encoding": "chunked"}))
        block = b"c" * 65536
        try:
            for _ in range(total // len(block)):
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused mid-body: the answer may still be readable
        try:
            return read_response(sock)
        except OSError:
            return None, b""


def raw_status(url: str, method: str, raw_query: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """A request with the query string exactly as given (no client-side encoding)."""
    sock, host, base = _connect(url)
    with sock:
        if method == "PUT":
            sock.sendall(head_of(method, f"{base}?path={raw_query}", host, {**headers, "Content-Length": "1"})
                         + b"x")
        else:
            sock.sendall(head_of(method, f"{base}?path={raw_query}", host, headers))
        return read_response(sock)


def generated(total: int, block: int = 1 << 20) -> Iterator[bytes]:
    """``total`` bytes made on the fly, each block different (a file assembled
    in the wrong order would not match its hash)."""
    base = os.urandom(block)
    done = 0
    while done < total:
        size = min(block, total - done)
        yield (done.to_bytes(8, "big") + base[8:size]) if size >= 8 else base[:size]
        done += size


def hashed(chunks: Iterable[bytes], digest: object) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)  # type: ignore[attr-defined]
        yield chunk


class PeakRss(threading.Thread):
    """A process's peak VmRSS, sampled every 5 ms from ``start()`` to ``growth()``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.before = self._rss()
        self.peak = self.before
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def _rss(self) -> int:
        return int(self.process.memory_info().rss)  # VmRSS of /proc/PID/status

    def growth(self) -> int:
        """Peak minus the RSS at construction."""
        self.done.set()
        self.join()
        return self.peak - self.before
