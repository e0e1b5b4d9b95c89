"""The file manager through the API, end to end: `gameplane up` and its local
node agent, real HTTP. The upload proxy streams: 2 GiB pass while the API's
memory stays flat; a cut-off upload leaves nothing; limits answer 413 before
the body when the length is known. Every answer is checked against the
documented shapes, every refusal of the traversal corpus on every route."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gameplane.backups.shapes import Envelope
from gameplane.files import shapes
from tests import filesctl as fc
from tests.controlplane import ControlPlane, running_control_plane

pytestmark = pytest.mark.slow
BIG = 2 << 30
RSS_BUDGET = 32 << 20


@pytest.fixture
def cp(data_dir: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    # SQLite only: the file routes touch the database only to find the server.
    with running_control_plane(data_dir, f"sqlite:///{tmp_path / 'db.sqlite'}") as plane:
        yield plane


def _server(cp: ControlPlane) -> tuple[str, Path]:
    sid = cp.create("files", template="backupbox")["id"]
    cp.wait_phase(sid, "stopped")
    return sid, cp.data_dir / "agent/instances" / sid / "data"


def _files(sid: str) -> str:
    return f"/api/game/servers/{sid}/files"


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    Envelope.model_validate(r.json())
    assert r.json()["error"] == code, r.text


def test_upload_list_download_delete_through_the_api(cp: ControlPlane) -> None:
    sid, data = _server(cp)
    url = _files(sid)
    r = cp.request("GET", url)
    assert r.status_code == 200
    shapes.Listing.model_validate(r.json())
    assert [e["name"] for e in r.json()["entries"]] == ["world", "conf.txt"]

    r = cp.request("PUT", url, params={"path": "world/map.txt"}, content=b"the map")
    assert r.status_code == 201, r.text
    shapes.UploadAnswer.model_validate(r.json())
    assert r.json() == {"file": {"path": "world/map.txt", "sizeBytes": 7}}
    assert (data / "world/map.txt").read_bytes() == b"the map"

    r = cp.request("GET", url, params={"path": "world"})
    shapes.Listing.model_validate(r.json())
    assert [(e["name"], e["type"], e["sizeBytes"]) for e in r.json()["entries"]] == [("map.txt", "file", 7)]

    r = cp.request("GET", url + "/content", params={"path": "world/map.txt"})
    assert r.status_code == 200 and r.content == b"the map"
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''map.txt"
    assert r.headers["content-length"] == "7"

    r = cp.request("DELETE", url, params={"path": "world"})
    assert r.status_code == 204 and not (data / "world").exists()
    _refused(cp.request("GET", url + "/content", params={"path": "world/map.txt"}), 404, "not_found")
    _refused(cp.request("DELETE", url, params={"path": "world"}), 404, "not_found")
    _refused(cp.request("GET", url, params={"path": "conf.txt"}), 409, "not_a_directory")
    _refused(cp.request("PUT", url, content=b"x"), 422, "invalid_request")  # no ?path=

    # Another user's (here: an unknown) server is a 404 on every file route.
    for method, suffix in fc.ROUTES:
        r = cp.request(method, f"/api/game/servers/nosuchserver/files{suffix}", params={"path": "x"},
                       content=b"x" if method == "PUT" else None)
        _refused(r, 404, "not_found")


def test_traversal_corpus_refused_on_every_route_through_the_api(cp: ControlPlane) -> None:
    sid, data = _server(cp)
    outside = cp.data_dir.parent / "outside"
    fc.plant_hazards(data, outside)
    passwd = Path("/etc/passwd").read_bytes()
    url = _files(sid)
    for method, suffix in fc.ROUTES:
        for path, status, code in fc.STRING_CORPUS:
            r = cp.request(method, url + suffix, params={"path": path},
                           content=b"pwned" if method == "PUT" else None)
            _refused(r, status, code)
        for raw in fc.ENCODED_CORPUS:
            got, body = fc.raw_status(cp.url + url + suffix, method, raw, cp.headers)
            assert got == 400 and b"invalid_path" in body, (method, suffix, raw, body)
        for path in fc.SPECIAL:
            r = cp.request(method, url + suffix, params={"path": path},
                           content=b"pwned" if method == "PUT" else None)
            _refused(r, *fc.special_expectation(method, suffix))
    fc.hazards_intact(data, outside, passwd)


def test_two_gib_stream_through_the_api_without_growing_its_memory(cp: ControlPlane) -> None:
    sid, data = _server(cp)
    url = cp.url + _files(sid)
    assert cp.proc is not None
    # Warm up: the first upload loads what any upload needs (aiohttp's session and so on).
    r = httpx.put(url, params={"path": "warm.bin"}, content=fc.generated(8 << 20), headers=cp.headers,
                  timeout=60)
    assert r.status_code == 201, r.text
    sampler = fc.PeakRss(cp.proc.pid)
    sampler.start()
    digest = hashlib.sha256()
    started = time.monotonic()
    r = httpx.put(url, params={"path": "big/world.bin"}, content=fc.hashed(fc.generated(BIG), digest),
                  headers={**cp.headers, "Content-Length": str(BIG)}, timeout=600)
    elapsed = time.monotonic() - started
    growth = sampler.growth()
    assert r.status_code == 201, r.text
    assert r.json()["file"]["sizeBytes"] == BIG
    print(f"2 GiB through the API in {elapsed:.1f}s ({BIG / elapsed / 2**20:.0f} MiB/s), "
          f"API peak RSS growth {growth / 2**20:.1f} MiB")
    assert growth < RSS_BUDGET, f"the API grew by {growth / 2**20:.1f} MiB while streaming"
    written = data / "big/world.bin"
    assert written.stat().st_size == BIG
    on_disk = hashlib.sha256()
    with open(written, "rb") as fh:
        while block := fh.read(1 << 22):
            on_disk.update(block)
    assert on_disk.hexdigest() == digest.hexdigest(), "the file arrived whole"
    written.unlink()


def test_an_upload_cut_off_halfway_through_the_api_leaves_no_file(cp: ControlPlane) -> None:
    sid, data = _server(cp)
    for chunked in (False, True):
        fc.put_cut_off(cp.url + _files(sid), "half.bin", cp.headers, 64 << 20, 32 << 20, chunked=chunked)
        deadline = time.monotonic() + 10
        while fc.temp_files(data) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not fc.temp_files(data) and not (data / "half.bin").exists()
    r = cp.request("PUT", _files(sid), params={"path": "after.bin"}, content=b"fine")
    assert r.status_code == 201


@pytest.fixture
def small_cp(data_dir: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    """An API with a 1 MiB upload limit (its local agent reads the same variable)."""
    with running_control_plane(data_dir, f"sqlite:///{tmp_path / 'db.sqlite'}",
                               upload_max_bytes="1MiB") as plane:
        yield plane


def test_limits_answer_413_in_the_envelope(small_cp: ControlPlane) -> None:
    cp = small_cp
    sid, data = _server(cp)
    url = cp.url + _files(sid)
    # Declared length: refused before any byte of the body is sent.
    for expect in (False, True):
        status, body = fc.put_headers_only(url, "big.bin", cp.headers, 2 << 20, expect=expect)
        assert status == 413 and b'"too_large"' in body, body
    # Chunked: cut off as it passes the limit, nothing left at the agent.
    status, body = fc.put_chunked(url, "big.bin", cp.headers, 4 << 20)
    assert status in (413, None) and (status is None or b'"too_large"' in body), body
    deadline = time.monotonic() + 10
    while fc.temp_files(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not fc.temp_files(data) and not (data / "big.bin").exists()
    r = cp.request("PUT", _files(sid), params={"path": "fits.bin"}, content=b"f" * (1 << 20))
    assert r.status_code == 201


def test_the_agents_early_refusal_is_answered_at_once(cp: ControlPlane) -> None:
    """The agent refuses before reading (a bad path, a folder in the way): its
    answer comes back through the API while the client has sent no byte of
    the body, with or without ``Expect: 100-continue``."""
    sid, data = _server(cp)
    status, body = fc.put_headers_only(cp.url + _files(sid), "../escape", cp.headers, 1 << 30, expect=True)
    assert status == 400 and b'"invalid_path"' in body, body
    status, body = fc.put_headers_only(cp.url + _files(sid), "world", cp.headers, 1 << 30)
    assert status == 409 and b'"is_a_directory"' in body, body
    status, body = fc.put_headers_only(cp.url + _files(sid), "huge.bin", cp.headers, 11 << 30)
    assert status == 413 and b'"maxBytes":10737418240' in body, "the API's default limit"
    assert not fc.temp_files(data)


def test_a_hung_agent_answers_504_instead_of_holding_the_upload(cp: ControlPlane) -> None:
    sid, _ = _server(cp)
    agent = cp.agent_process()
    assert agent is not None
    agent.suspend()  # accepts connections (the kernel does), answers nothing
    try:
        started = time.monotonic()
        r = httpx.put(cp.url + _files(sid), params={"path": "x.bin"}, content=b"x" * 1000,
                      headers=cp.headers, timeout=60)
        waited = time.monotonic() - started
    finally:
        agent.resume()
    _refused(r, 504, "agent_timeout")
    assert waited < 30, waited
    assert cp.request("PUT", _files(sid), params={"path": "x.bin"}, content=b"x").status_code == 201
