"""Replace the data dir with a restored one so that, whenever the agent dies,
the data dir afterwards is either the old world or the new one, whole.

The restored tree is built in ``.restore-staging`` beside ``data/`` (same
filesystem), verified, and only then swapped in:

* ``renameat2(RENAME_EXCHANGE)`` swaps the two names in one atomic step
  (Linux 3.15+, most local filesystems); ``data/`` is never absent.
* Where that is refused, two renames: ``data → .restore-old``, then
  ``.restore-staging → data``. Between them ``data/`` does not exist; the
  journal says the staging dir was verified, so recovery rolls forward.

The journal ``run/restore.json`` is written before the swap and removed when
the leftovers are gone. ``recover()`` (agent start, before the supervisor
looks at the workload) finishes or undoes whatever a killed restore left.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gameplane.agent.instance import InstancePaths, read_json, write_json_atomic

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
# Tests: pause (SIGSTOP) the agent at these named points of a restore, so a test
# can SIGKILL it exactly there; also force the two-rename swap.
PAUSE_ENV = "GAMEPLANE_TEST_PAUSE_AT"
NO_EXCHANGE_ENV = "GAMEPLANE_TEST_NO_EXCHANGE"


def pause_point(name: str) -> None:
    if name in os.environ.get(PAUSE_ENV, "").split(","):
        log.warning("pausing at %s (%s)", name, PAUSE_ENV)
        # To this thread: a process-directed SIGSTOP may stop the others first
        # and let this one run on past the point before it stops.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        time.sleep(0.5)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False if the kernel or filesystem cannot."""
    if os.environ.get(NO_EXCHANGE_ENV) or not hasattr(_libc, "renameat2"):
        return False
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def sync_tree(path: Path) -> None:
    """Flush the filesystem holding ``path`` (a power cut after the swap must
    not find the new names pointing at unwritten data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if hasattr(_libc, "syncfs"):
            _libc.syncfs(fd)
        else:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, paths: InstancePaths):
        self.paths = paths

    def write(self, **fields: Any) -> None:
        data = read_json(self.paths.restore_journal)
        data.update(fields)
        write_json_atomic(self.paths.restore_journal, data)

    def read(self) -> dict[str, Any]:
        return read_json(self.paths.restore_journal)

    def remove(self) -> None:
        self.paths.restore_journal.unlink(missing_ok=True)


def prepare_staging(paths: InstancePaths) -> Path:
    """An empty staging dir, after clearing whatever an earlier attempt left."""
    for leftover in (paths.restore_staging, paths.restore_old):
        shutil.rmtree(leftover, ignore_errors=True)
    paths.restore_staging.mkdir(mode=0o750)
    return paths.restore_staging


def swap_in(paths: InstancePaths, journal: Journal) -> None:
    """Make the verified staging dir the data dir, then drop the old world."""
    sync_tree(paths.restore_staging)
    journal.write(stage="verified")
    pause_point("before_swap")
    if exchange(paths.restore_staging, paths.data):
        old = paths.restore_staging
    else:
        os.rename(paths.data, paths.restore_old)
        pause_point("mid_swap")
        os.rename(paths.restore_staging, paths.data)
        old = paths.restore_old
    _fsync_dir(paths.root)
    journal.write(stage="swapped")
    pause_point("after_swap")
    shutil.rmtree(old, ignore_errors=True)
    journal.remove()


def discard(paths: InstancePaths, journal: Journal) -> None:
    """A failed restore: the data dir was never touched; drop the staging dir."""
    if not paths.data.exists() and paths.restore_old.exists():
        os.rename(paths.restore_old, paths.data)
    shutil.rmtree(paths.restore_staging, ignore_errors=True)
    journal.remove()


def recover(paths: InstancePaths) -> dict[str, Any] | None:
    """Resolve a restore a dead agent left; answer its journal (None if none).

    ``data/`` whole is the rule: if it exists it is whole (it was only ever
    replaced by a rename), so leftovers are dropped. If it is missing, the
    two-rename swap was cut between its renames: roll forward to the verified
    staging dir, or back to the old dir."""
    journal = Journal(paths)
    state = journal.read()
    leftovers = paths.restore_staging.exists() or paths.restore_old.exists()
    if not state and not leftovers:
        return None
    if not paths.data.exists():
        if state.get("stage") in ("verified", "swapped") and paths.restore_staging.exists():
            os.rename(paths.restore_staging, paths.data)
            state["outcome"] = "new"
        elif paths.restore_old.exists():
            os.rename(paths.restore_old, paths.data)
            state["outcome"] = "old"
    elif state.get("stage") == "swapped":
        state["outcome"] = "new"
    elif state.get("stage") != "verified":
        state["outcome"] = "old"  # cut before the swap: the staging dir was never used
    # (stage "verified" with data present: the exchange may or may not have
    # happened; either way data/ is one whole world and the other dir goes.)
    shutil.rmtree(paths.restore_staging, ignore_errors=True)
    shutil.rmtree(paths.restore_old, ignore_errors=True)
    journal.remove()
    log.warning("instance dir %s: resolved an interrupted restore (%s)", paths.root, state)
    return state
