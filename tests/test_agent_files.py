"""The agent's file manager (``/files``) over real HTTP against a real agent:
round trip, ownership of what it writes, every refusal of the traversal
corpus on every route, size limits before and during the body, interrupted
uploads, a full disk, and the sweep of a killed agent's temp files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agentctl import TEMPLATES, Agent, Client, running_agent
from tests.backupctl import backup
from tests.conftest import TOKEN
from tests.filesctl import (
    ENCODED_CORPUS,
    ROUTES,
    SPECIAL,
    STRING_CORPUS,
    generated,
    hashed,
    hazards_intact,
    head_of,
    plant_hazards,
    put_chunked,
    put_cut_off,
    put_headers_only,
    raw_status,
    read_response,
    special_expectation,
    temp_files,
)

BOX = ["--template", str(TEMPLATES / "backupbox.toml")]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _data(data_dir: Path) -> Path:
    return data_dir / "instances/default/data"


@pytest.fixture
def box(data_dir: Path) -> Iterator[Agent]:
    with running_agent(data_dir, TOKEN, [*BOX, "--upload-max-bytes", "4MiB"]) as agent:
        yield agent


def _put(c: Client, path: str, content: object) -> httpx.Response:
    return c.request("PUT", "/files", params={"path": path}, content=content)


def test_upload_list_download_delete_round_trip(box: Agent, data_dir: Path) -> None:
    c, data = box.client(), _data(data_dir)
    r = c.get("/files")
    assert r.status_code == 200
    assert [(e["name"], e["type"]) for e in r.json()["entries"]] == [("world", "dir"), ("conf.txt", "file")]

    body = os.urandom(300_000)
    r = _put(c, "maps/new/big.bin", body)
    assert r.status_code == 201, r.text
    assert r.json() == {"file": {"path": "maps/new/big.bin", "sizeBytes": len(body)}}
    assert (data / "maps/new/big.bin").read_bytes() == body
    uid = c.status()["sandbox"]["uid"]
    for made in (data / "maps", data / "maps/new", data / "maps/new/big.bin"):
        assert os.lstat(made).st_uid == uid, f"{made} belongs to the workload's user"
    assert stat.S_IMODE(os.lstat(data / "maps/new/big.bin").st_mode) == 0o640

    r = c.get("/files?path=maps/new")
    entry = r.json()["entries"][0]
    assert entry["name"] == "big.bin" and entry["type"] == "file" and entry["sizeBytes"] == len(body)
    assert entry["modifiedAt"].endswith("Z")
    assert [e["name"] for e in c.get("/files?path=maps").json()["entries"]] == ["new"]

    r = c.get("/files/content?path=maps/new/big.bin")
    assert r.status_code == 200 and r.content == body
    assert r.headers["content-length"] == str(len(body))
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''big.bin"

    # Replacing is atomic and the old content is gone; chunked bodies work too.
    r = _put(c, "maps/new/big.bin", iter([b"new ", b"content"]))
    assert r.status_code == 201 and (data / "maps/new/big.bin").read_bytes() == b"new content"
    r = _put(c, "empty", b"")
    assert r.status_code == 201 and (data / "empty").read_bytes() == b""

    # Names are taken as they are: spaces, unicode, leading dots.
    r = _put(c, "world/été 2 .cfg", b"x")
    assert r.status_code == 201 and (data / "world/été 2 .cfg").read_bytes() == b"x"

    assert c.request("DELETE", "/files", params={"path": "empty"}).status_code == 204
    assert not (data / "empty").exists()
    # A folder goes with everything in it.
    assert c.request("DELETE", "/files", params={"path": "maps"}).status_code == 204
    assert not (data / "maps").exists()
    assert not temp_files(data)


def test_not_found_and_wrong_kind_answers(box: Agent) -> None:
    c = box.client()
    cases = [
        ("GET", "/files", "nothing", 404, "not_found"),
        ("GET", "/files", "conf.txt", 409, "not_a_directory"),
        ("GET", "/files/content", "nothing", 404, "not_found"),
        ("GET", "/files/content", "world", 409, "is_a_directory"),
        ("GET", "/files/content", "conf.txt/x", 409, "not_a_directory"),
        ("DELETE", "/files", "nothing", 404, "not_found"),
        ("DELETE", "/files", "", 400, "invalid_path"),
        ("DELETE", "/files", ".", 400, "invalid_path"),
        ("PUT", "/files", "world", 409, "is_a_directory"),
        ("PUT", "/files", "conf.txt/x", 409, "not_a_directory"),
        ("PUT", "/files", "", 400, "invalid_path"),
    ]
    for method, route, path, status, code in cases:
        r = c.request(method, route, params={"path": path}, content=b"x" if method == "PUT" else None)
        assert (r.status_code, r.json()["error"]) == (status, code), (method, route, path, r.text)
        assert set(r.json()) == {"error", "details"}
    for method, route in (("GET", "/files/content"), ("PUT", "/files"), ("DELETE", "/files")):
        r = c.request(method, route)
        assert (r.status_code, r.json()["error"]) == (400, "missing_field")


def test_traversal_corpus_refused_on_every_route(box: Agent, data_dir: Path) -> None:
    c, data = box.client(), _data(data_dir)
    outside = data_dir.parent / "outside"
    plant_hazards(data, outside)
    passwd = Path("/etc/passwd").read_bytes()
    for method, suffix in ROUTES:
        for path, status, code in STRING_CORPUS:
            r = c.request(method, f"/files{suffix}", params={"path": path},
                          content=b"pwned" if method == "PUT" else None)
            assert (r.status_code, r.json()["error"]) == (status, code), (method, suffix, path, r.text)
        for raw in ENCODED_CORPUS:
            got, body = raw_status(box.url + f"/files{suffix}", method, raw, AUTH)
            assert got == 400 and b"invalid_path" in body, (method, suffix, raw, body)
        for path in SPECIAL:
            started = time.monotonic()
            r = c.request(method, f"/files{suffix}", params={"path": path},
                          content=b"pwned" if method == "PUT" else None)
            assert (r.status_code, r.json()["error"]) == special_expectation(method, suffix), (method, path)
            assert time.monotonic() - started < 2, "a FIFO was opened"
    hazards_intact(data, outside, passwd)
    # The listing shows only what the file manager can open.
    names = [e["name"] for e in c.get("/files").json()["entries"]]
    assert names == ["world", "conf.txt"]
    assert c.get("/files?path=world").json()["entries"] == []


def test_a_symlink_swapped_in_for_a_folder_does_not_lead_out(box: Agent, data_dir: Path) -> None:
    """The workload may replace a folder by a symlink at any moment: the agent
    never follows one, whatever it checked before."""
    c, data = box.client(), _data(data_dir)
    outside = data_dir.parent / "outside2"
    outside.mkdir()
    (data / "world").rmdir()
    os.symlink(outside, data / "world")
    for _ in range(3):
        r = _put(c, "world/dropped.txt", b"x")
        assert r.status_code == 400 and r.json()["error"] == "invalid_path"
    assert not list(outside.iterdir())


def test_token_is_required_on_every_route(box: Agent) -> None:
    for token in (None, "wrong-token"):
        c = box.client(token=token or "")
        for method, suffix in ROUTES:
            r = c.request(method, f"/files{suffix}", params={"path": "conf.txt"},
                          content=b"x" if method == "PUT" else None)
            assert r.status_code == 401 and r.json()["error"] in ("missing_token", "invalid_token"), r.text
    assert (box.data_dir / "instances/default/data/conf.txt").read_text().startswith("not backed up")


def test_declared_length_over_the_limit_is_refused_before_the_body(box: Agent, data_dir: Path) -> None:
    for expect in (False, True):
        status, body = put_headers_only(box.url + "/files", "big.bin", AUTH, 5 << 20, expect=expect)
        assert status == 413 and b'"too_large"' in body and b'"maxBytes":4194304' in body
    assert not (_data(data_dir) / "big.bin").exists() and not temp_files(_data(data_dir))


def test_chunked_body_over_the_limit_is_cut_off_and_leaves_nothing(box: Agent, data_dir: Path) -> None:
    status, body = put_chunked(box.url + "/files", "big.bin", AUTH, 6 << 20)
    assert status in (413, None), body
    if status is not None:
        assert b'"too_large"' in body
    _wait_no_temp(_data(data_dir))
    assert not (_data(data_dir) / "big.bin").exists()
    # Under the limit, the same route takes it.
    assert put_chunked(box.url + "/files", "ok.bin", AUTH, 1 << 20)[0] == 201


def _wait_no_temp(data: Path) -> None:
    deadline = time.monotonic() + 5
    while temp_files(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not temp_files(data), "an interrupted upload left its temp file"


@pytest.mark.parametrize("chunked", [False, True])
def test_an_upload_cut_off_halfway_leaves_no_file(box: Agent, data_dir: Path, chunked: bool) -> None:
    data = _data(data_dir)
    (data / "kept.bin").write_bytes(b"the old content")
    for target in ("half.bin", "kept.bin", "new-dir/half.bin"):
        put_cut_off(box.url + "/files", target, AUTH, 2 << 20, 1 << 20, chunked=chunked)
        _wait_no_temp(data)
    assert not (data / "half.bin").exists() and not (data / "new-dir/half.bin").exists()
    assert (data / "kept.bin").read_bytes() == b"the old content", "the old file is untouched"
    # The agent is fine afterwards.
    assert _put(box.client(), "after.bin", b"ok").status_code == 201


def test_quota_of_the_template_counts_what_the_data_dir_holds(data_dir: Path) -> None:
    template = data_dir.parent / "quotabox.toml"
    template.write_text((TEMPLATES / "backupbox.toml").read_text() + '\n[limits]\ndisk = "1MiB"\n')
    with running_agent(data_dir, TOKEN, ["--template", str(template)]) as agent:
        c, data = agent.client(), _data(data_dir)
        status, body = put_headers_only(agent.url + "/files", "big.bin", AUTH, 2 << 20, expect=True)
        assert status == 413 and b'"quota_exceeded"' in body, body
        status, body = put_chunked(agent.url + "/files", "big.bin", AUTH, 2 << 20)
        assert status in (413, None) and (status is None or b'"quota_exceeded"' in body), body
        _wait_no_temp(data)
        assert _put(c, "a.bin", b"a" * 600_000).status_code == 201
        r = _put(c, "b.bin", b"b" * 600_000)
        assert r.status_code == 413 and r.json()["error"] == "quota_exceeded", r.text
        assert r.json()["details"]["usedBytes"] >= 600_000
        # Replacing a file frees what it held.
        assert _put(c, "a.bin", b"c" * 700_000).status_code == 201
        assert not (data / "b.bin").exists() and not temp_files(data)


@contextlib.contextmanager
def _small_disk(path: Path, size: str, uid: int) -> Iterator[None]:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750,uid={uid},gid={uid}",
                              "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_answers_507_and_leaves_nothing(box: Agent, data_dir: Path) -> None:
    c, data = box.client(), _data(data_dir)
    with _small_disk(data, "1m", c.status()["sandbox"]["uid"]):
        status, body = put_headers_only(box.url + "/files", "big.bin", AUTH, 2 << 20, expect=True)
        assert status == 507 and b'"insufficient_storage"' in body, body
        r = _put(c, "big.bin", generated(2 << 20, 1 << 16))  # chunked: found out while writing
        assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
        assert not (data / "big.bin").exists() and not temp_files(data)
        assert _put(c, "small.bin", b"fits").status_code == 201


def test_large_upload_arrives_whole(box: Agent, data_dir: Path) -> None:
    digest = hashlib.sha256()
    size = 3 << 20
    r = httpx.put(box.url + "/files", params={"path": "whole.bin"}, content=hashed(generated(size), digest),
                  headers={**AUTH, "Content-Length": str(size)}, timeout=30)
    assert r.status_code == 201
    written = _data(data_dir) / "whole.bin"
    assert written.stat().st_size == size
    assert hashlib.sha256(written.read_bytes()).hexdigest() == digest.hexdigest()


def test_temp_files_of_a_killed_agent_are_swept_at_start(data_dir: Path) -> None:
    agent = Agent(data_dir, TOKEN, BOX).start()
    try:
        data = _data(data_dir)
        (data / "world/.gameplane-upload-0123456789abcdef.tmp").write_bytes(b"half")
        (data / ".gameplane-upload-feedfeedfeedfeed.tmp").write_bytes(b"half")
        # Written after the agent's start (as by an upload under way): kept.
        young = data / ".gameplane-upload-0000000000000000.tmp"
        young.write_bytes(b"streaming")
        os.utime(young, (time.time() + 3600, time.time() + 3600))
        agent.sigkill()
        agent.start()
        deadline = time.monotonic() + 10  # the sweep runs in the background after the start
        while temp_files(data) != [young] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert temp_files(data) == [young]
        assert (data / "conf.txt").exists()
    finally:
        agent.terminate()


def _slow_stopping_box(data_dir: Path) -> list[str]:
    """A server that ignores SIGTERM keeps a restore in its `stopping` stage
    for a few seconds: long enough to try every route meanwhile."""
    text = (TEMPLATES / "backupbox.toml").read_text()
    text = text.replace("echo ready\n", "trap '' TERM\necho ready\n").replace("kill_timeout = 2",
                                                                             "timeout = 3\nkill_timeout = 2")
    template = data_dir.parent / "slowstop.toml"
    template.write_text(text)
    return ["--template", str(template)]


def _restoring(c: Client) -> None:
    assert c.post("/start").status_code == 202
    c.wait_phase("running")
    made = backup(c, "before")
    assert c.post(f"/backups/restore?id={made['id']}").status_code == 202
    c.wait(lambda s: s["busy"] == "restore", 5, "the restore")


def test_writes_answer_busy_during_a_restore_reads_do_not(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, _slow_stopping_box(data_dir)) as agent:
        c, data = agent.client(), _data(data_dir)
        _restoring(c)
        r = _put(c, "during.txt", b"x")
        assert (r.status_code, r.json()) == (409, {"error": "busy", "details": {"operation": "restore"}})
        r = c.request("DELETE", "/files", params={"path": "conf.txt"})
        assert r.status_code == 409 and r.json()["error"] == "busy"
        assert c.get("/files").status_code == 200
        assert c.get("/files/content?path=conf.txt").status_code == 200
        assert c.status()["busy"] == "restore", "all of that happened during the restore"
        c.wait(lambda s: s["busy"] is None, 60, "the restore's end")
        assert not (data / "during.txt").exists() and (data / "conf.txt").exists()
        assert _put(c, "after.txt", b"x").status_code == 201


def test_an_upload_that_a_restore_overtakes_fails_and_leaves_nothing(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, _slow_stopping_box(data_dir)) as agent:
        c, data = agent.client(), _data(data_dir)
        with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as sock:
            sock.sendall(head_of("PUT", "/files?path=straddle.bin", f"127.0.0.1:{agent.port}",
                                 {**AUTH, "Transfer-Encoding": "chunked"}))
            sock.sendall(b"10\r\n" + b"s" * 16 + b"\r\n")
            deadline = time.monotonic() + 5
            while not temp_files(data) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert temp_files(data), "the upload is under way"
            _restoring(c)
            sock.sendall(b"10\r\n" + b"s" * 16 + b"\r\n0\r\n\r\n")
            status, body = read_response(sock)
        assert status == 409 and b'"busy"' in body, body
        assert not (data / "straddle.bin").exists() and not temp_files(data)
