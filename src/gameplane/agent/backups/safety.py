"""What a restore refuses: any archive member or restored file that could
write, point or link outside the data dir, or create a device.

Archive members are checked before anything is written for them; a restic
restore (which cannot be checked member by member) is checked as a tree in
its staging dir before the swap. Both raise ``invalid_archive`` (422)."""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from gameplane.errors import Unprocessable


def refuse(member: str, reason: str) -> Unprocessable:
    return Unprocessable("invalid_archive", {"member": member, "reason": reason})


def member_path(name: str) -> str:
    """The normalized relative path of an archive member, or ``invalid_archive``."""
    if not name or "\x00" in name:
        raise refuse(name, "empty name or NUL byte")
    if name.startswith("/"):
        raise refuse(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse(name, "'..' in the path")
    if not parts:
        raise refuse(name, "names the data dir itself")
    return "/".join(parts)


def symlink_target(path: str, target: str) -> None:
    """A symlink at ``path`` (relative to the data dir) may only point inside it."""
    if not target or target.startswith("/"):
        raise refuse(path, f"symlink to an absolute path: {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise refuse(path, f"symlink out of the data dir: {target!r}")


def validate_tree(root: Path) -> int:
    """Check a restored tree; return its size in bytes."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                symlink_target(rel, os.readlink(full))
            elif stat.S_ISREG(mode):
                total += os.lstat(full).st_size
            elif not stat.S_ISDIR(mode):
                raise refuse(rel, "not a regular file, directory or symlink (device, fifo or socket)")
    return total
