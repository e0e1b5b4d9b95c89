"""Archives a restore must refuse (tar-slip and friends), at the extractor
and through the agent's restore route; nothing may land outside staging."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from gameplane.agent.backups.engine import Progress
from gameplane.agent.backups.extract import MANIFEST, extract_archive
from gameplane.errors import Unprocessable
from tests.agentctl import running_agent
from tests.backupctl import BOX, backup, data_of, restore, tree, write_world
from tests.conftest import TOKEN


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, data


def _archive(members: list[tuple[tarfile.TarInfo, bytes]], manifest: bool = True) -> bytes:
    raw = io.BytesIO()
    entries = {}
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
            if info.type == tarfile.REGTYPE:
                entries[info.name] = {"type": "file", "size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}
        if manifest:
            body = json.dumps({"version": 1, "entries": entries}).encode()
            info, data = _member(MANIFEST, data=body)
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(raw.getvalue())


CORPUS = {
    "absolute path": [_member("/tmp/gameplane-evil", data=b"x")],
    "dot-dot": [_member("../evil", data=b"x")],
    "nested dot-dot": [_member("world/../../evil", data=b"x")],
    "symlink out": [_member("world", tarfile.SYMTYPE, link="../..")],
    "absolute symlink": [_member("etc", tarfile.SYMTYPE, link="/etc")],
    "write through a symlink": [_member("s", tarfile.SYMTYPE, link="."), _member("s/f", data=b"x")],
    "hardlink out": [_member("h", tarfile.LNKTYPE, link="/etc/passwd")],
    "hardlink up": [_member("h", tarfile.LNKTYPE, link="../evil")],
    "hardlink to a later member": [_member("h", tarfile.LNKTYPE, link="f"), _member("f", data=b"x")],
    "device file": [_member("null", tarfile.CHRTYPE)],
    "fifo": [_member("pipe", tarfile.FIFOTYPE)],
    "duplicate name": [_member("f", data=b"a"), _member("f", data=b"b")],
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_archive_is_refused_and_writes_nothing_outside(tmp_path: Path, case: str) -> None:
    staging = tmp_path / "inst" / "staging"
    staging.mkdir(parents=True)
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(_archive(CORPUS[case]))
    with archive.open("rb") as fh, pytest.raises(Unprocessable) as caught:
        extract_archive(fh, staging, Progress("restore", "x"))
    assert caught.value.code == "invalid_archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.zst", "inst"]
    assert [p.name for p in (tmp_path / "inst").iterdir()] == ["staging"]
    assert not Path("/tmp/gameplane-evil").exists()


@pytest.mark.parametrize("case", ["no manifest", "tampered", "truncated", "not zstd"])
def test_damaged_archive_is_refused(tmp_path: Path, case: str) -> None:
    good = [_member("f", data=b"hello" * 1000)]
    blob = _archive(good, manifest=case != "no manifest")
    if case == "tampered":
        # The good archive's manifest, other content.
        raw = io.BytesIO(zstandard.ZstdDecompressor().decompress(_archive(good)))
        bad = raw.getvalue().replace(b"hello" * 10, b"HELLO" * 10, 1)
        blob = zstandard.ZstdCompressor().compress(bad)
    elif case == "truncated":
        blob = blob[: len(blob) // 2]
    elif case == "not zstd":
        blob = b"this is not an archive" * 100
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(blob)
    (tmp_path / "s").mkdir()
    with archive.open("rb") as fh, pytest.raises(Unprocessable) as caught:
        extract_archive(fh, tmp_path / "s", Progress("restore", "x"))
    assert caught.value.code == "invalid_archive"


def test_a_refused_archive_leaves_the_data_dir_untouched(data_dir: Path) -> None:
    with running_agent(data_dir, TOKEN, BOX) as agent:
        c = agent.client()
        write_world(data_of(data_dir), "current")
        made = backup(c)
        before = tree(data_of(data_dir))
        archive = data_dir / "instances/default/backups" / f"{made['id']}.tar.zst"
        archive.write_bytes(_archive(CORPUS["symlink out"]))
        record = archive.with_name(f"{made['id']}.json")
        record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": None}))
        progress = restore(c, made["id"])
        assert progress["status"] == "failed" and progress["error"].startswith("invalid_archive"), progress
        assert tree(data_of(data_dir)) == before
        assert not list(data_of(data_dir).parent.glob(".restore-*"))
        time.sleep(0.1)
        assert c.status()["phase"] == "stopped"
