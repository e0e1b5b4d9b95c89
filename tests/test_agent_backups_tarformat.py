"""The archive engine's own tar reading and writing: archives of GNU tar (gnu
and posix formats) restore, ours read back with plain tar, long and non-ASCII
names survive both ways, what the parser does not support is refused, and a
backup that fails part-way raises and stops its threads."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from gameplane.agent.backups import archive, tarformat
from gameplane.agent.backups.archive import write_archive
from gameplane.agent.backups.engine import BackupFailed, Progress, Source
from gameplane.agent.backups.extract import MANIFEST, extract_archive
from gameplane.agent.files.datadir import TEMP_PREFIX
from gameplane.errors import Unprocessable
from tests.backupctl import tree

LONG_DIR = "world/" + "d" * 70 + "/" + "é" * 40  # > 100 bytes, not ASCII


def _world(root: Path) -> None:
    deep = root / LONG_DIR
    deep.mkdir(parents=True)
    (deep / ("f" * 120 + ".dat")).write_bytes(b"long name\n" * 100)
    (root / "world/wörld-ñ.txt").write_text("unicode\n")
    (root / "world/empty").write_bytes(b"")
    (root / "world/big.bin").write_bytes(os.urandom(5 << 20) + b"tail")  # the large-file path
    (root / "world/level.dat").write_bytes(b"level\n")
    os.link(root / "world/level.dat", root / "world/level-hardlink.dat")
    (root / "world/far").symlink_to("../" + LONG_DIR + "/" + "f" * 120 + ".dat")
    os.chmod(root / "world/level.dat", 0o640)


def _restore(blob: bytes, staging: Path) -> None:
    staging.mkdir()
    extract_archive(io.BytesIO(blob), staging, Progress("restore", "x"))


def _ours(src: Path, tmp: Path) -> Path:
    archive = tmp / "ours.tar.zst"
    with archive.open("wb") as fh:
        write_archive(fh, Source(src, (".",)), Progress("backup", "x"))
    return archive


def test_our_archive_round_trips_and_plain_tar_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _world(src)
    archive = _ours(src, tmp_path)
    _restore(archive.read_bytes(), tmp_path / "ours")
    assert tree(tmp_path / "ours") == tree(src)
    assert (tmp_path / "ours/world/level.dat").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "ours/world/big.bin").stat().st_mtime == int((src / "world/big.bin").stat().st_mtime)
    (tmp_path / "tar").mkdir()
    subprocess.run(["tar", "-I", "zstd", "-xf", str(archive), "-C", str(tmp_path / "tar")], check=True)
    (tmp_path / "tar" / MANIFEST).unlink()
    assert tree(tmp_path / "tar") == tree(src)


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_archive_made_by_gnu_tar_restores(tmp_path: Path, fmt: str) -> None:
    """GNU long names (gnu) and pax headers (posix), hardlinks: with our manifest appended."""
    src = tmp_path / "src"
    _world(src)
    manifest_dir = tmp_path / "m"
    manifest_dir.mkdir()
    manifest = subprocess.run(["tar", "-I", "zstd", "-xOf", str(_ours(src, tmp_path)), MANIFEST],
                              capture_output=True, check=True).stdout
    (manifest_dir / MANIFEST).write_bytes(manifest)
    raw = tmp_path / "gnu.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(raw), "-C", str(src), "world"], check=True)
    subprocess.run(["tar", f"--format={fmt}", "-rf", str(raw), "-C", str(manifest_dir), MANIFEST], check=True)
    listing = subprocess.run(["tar", "-tvf", str(raw)], capture_output=True, text=True, check=True).stdout
    assert "link to" in listing, "GNU tar stored the second name as a hardlink"
    _restore(zstandard.ZstdCompressor().compress(raw.read_bytes()), tmp_path / "out")
    assert tree(tmp_path / "out") == tree(src)
    assert os.path.samefile(tmp_path / "out/world/level.dat", tmp_path / "out/world/level-hardlink.dat")


def test_headers_parse_back() -> None:
    long_link = "../" + "x" * 200
    block = tarformat.header("a" * 150, tarformat.SYMLINK, mode=0o777, mtime=-5, link=long_link)
    extensions = tarformat.Extensions()
    pax, rest = block[:512], block[512:]
    assert extensions.takes(pax[156:157])
    size = tarformat.parse(pax)[2]
    extensions.add(pax[156:157], rest[:size])
    member = extensions.apply(rest[-512:])
    assert (member.name, member.kind, member.link) == ("a" * 150, tarformat.SYMLINK, long_link)
    assert member.mtime == -5
    # GNU base-256 numbers (large or negative values in GNU archives).
    assert tarformat._number(b"\x80" + (1 << 40).to_bytes(11, "big"), "size") == 1 << 40
    assert tarformat._number(b"\xff" * 12, "mtime") == -1


def _tar(*members: bytes, end: bool = True) -> bytes:
    return b"".join(members) + (tarformat.END if end else b"")


def _file(name: str, data: bytes) -> bytes:
    return tarformat.header(name, tarformat.REG, len(data)) + data + tarformat.padding(len(data))


def _with_kind(kind: bytes, name: str = "x", size: int = 0) -> bytes:
    block = bytearray(tarformat.header(name, tarformat.REG, size))
    block[156:157] = kind
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _pax(records: bytes) -> bytes:
    return _with_kind(b"x", "pax", len(records)) + records + tarformat.padding(len(records))


def _corrupt(block: bytes) -> bytes:
    return b"y" + block[1:]


REFUSED = {
    "bad header checksum": (_tar(_corrupt(_file("f", b"data"))), "checksum"),
    "global pax header": (_tar(_with_kind(b"g")), "global pax"),
    "GNU sparse file": (_tar(_with_kind(b"S", size=0)), "not supported"),
    "pax sparse file": (_tar(_pax(b"22 GNU.sparse.major=1\n"), _file("f", b"")), "sparse"),
    "volume label": (_tar(_with_kind(b"V")), "not supported"),
    "huge extension header": (_tar(_with_kind(b"x", "pax", 64 << 20)), "extension header"),
    "no end-of-archive marker": (_tar(_file("f", b"data"), end=False), "end-of-archive"),
    "file where members made a directory": (_tar(_file("a/f", b"1"), _file("a", b"2")), "earlier members"),
    "negative size": (_tar(_pax(b"12 size=-10\n"), _file("f", b"")), "negative"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_or_damaged_tar_is_refused(tmp_path: Path, case: str) -> None:
    raw, reason = REFUSED[case]
    with pytest.raises(Unprocessable) as caught:
        _restore(zstandard.ZstdCompressor().compress(raw), tmp_path / "s")
    assert caught.value.code == "invalid_archive" and reason in caught.value.details["reason"], caught.value


def test_data_after_the_zstd_frame_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "world").mkdir(parents=True)
    (src / "world/f").write_text("x")
    blob = _ours(src, tmp_path).read_bytes()
    _restore(blob, tmp_path / "good")
    with pytest.raises(Unprocessable) as caught:
        _restore(blob + b"trailing bytes", tmp_path / "bad")
    assert caught.value.code == "invalid_archive"


class _FullDisk:
    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("case", ["disk full", "file vanished", "file shrank"])
def test_a_failing_backup_raises_and_leaves_no_thread_behind(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    _world(src)
    before = threading.active_count()
    progress = Progress("backup", "x")
    if case == "disk full":
        with pytest.raises(OSError, match="No space"):
            write_archive(_FullDisk(), Source(src, (".",)), progress)  # type: ignore[arg-type]
    elif case == "file vanished":
        class Vanishing(Source):
            def entries(self) -> Iterator[tuple[str, str, os.stat_result]]:
                for rel, full, st in super().entries():
                    if rel == "world/level.dat":
                        os.unlink(full)
                    yield rel, full, st
        with (tmp_path / "a").open("wb") as fh, pytest.raises(FileNotFoundError):
            write_archive(fh, Vanishing(src, (".",)), progress)
    else:
        fd = os.open(src / "world/level.dat", os.O_RDONLY)
        with pytest.raises(BackupFailed) as caught:
            archive._read(fd, 100, "world/level.dat")  # fstat said 100 bytes, 6 are left
        os.close(fd)
        assert caught.value.code == "file_changed"
    assert threading.active_count() == before


def test_an_upload_under_way_is_not_backed_up(tmp_path: Path) -> None:
    """The file manager writes an upload to a temp name and renames it in when
    whole: a backup taken meanwhile must not carry the half-written file."""
    data = tmp_path / "data"
    (data / "world").mkdir(parents=True)
    (data / "world" / "map.sav").write_bytes(b"map")
    (data / "world" / f"{TEMP_PREFIX}0123456789abcdef.tmp").write_bytes(b"half")
    (data / f"{TEMP_PREFIX}feedfeedfeedfeed.tmp").write_bytes(b"half")
    names = [name for name, _, _ in Source(data, (".",)).entries()]
    assert names == ["world", "world/map.sav"]
