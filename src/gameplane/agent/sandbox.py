"""How a workload's command line is wrapped: cgroup membership, rlimits, the
switch to the instance's unprivileged user, and bubblewrap.

The launcher is ``sh -c`` that joins the cgroups (so every process the workload
forks is counted from its first instruction), then ``exec``s a chain with no
Python in it: ``prlimit`` → ``setpriv`` → ``bwrap`` → the server. The chain
keeps one pid until bwrap forks, and needs no ``preexec_fn`` (unsafe with
threads).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gameplane.templates.model import Limits

# Directories a workload sees read-only. Merged-/usr hosts have /bin, /lib...
# as symlinks into /usr; they are recreated as symlinks inside the sandbox.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
STATUS_FD = 3


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@dataclass(frozen=True)
class Identity:
    """Who the workload runs as. ``uid is None`` means the agent's own user
    (the agent is not root and cannot switch)."""

    uid: int | None
    gid: int | None

    @classmethod
    def for_instance(cls, spec: str, allocated_uid: int | None) -> Identity:
        if os.geteuid() != 0:
            return cls(None, None)
        if spec == "instance":
            assert allocated_uid is not None
            return cls(allocated_uid, allocated_uid)
        entry = pwd.getpwnam(spec)
        if entry.pw_uid == 0:
            raise ValueError("a workload never runs as root")
        return cls(entry.pw_uid, entry.pw_gid)


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    workdir: str
    data_dir: Path
    identity: Identity
    limits: Limits
    use_bwrap: bool
    status_path: Path
    cgroup_procs: list[Path] = field(default_factory=list)

    def shell_script(self) -> str:
        """The ``sh -c`` script that becomes the workload (see module doc)."""
        lines = ["set -e"]
        if self.use_bwrap:
            lines.append(f"exec {STATUS_FD}>{shlex.quote(str(self.status_path))}")
        lines += [f"echo $$ > {shlex.quote(str(p))}" for p in self.cgroup_procs]
        chain: list[str] = []
        rlimits = self._rlimits()
        if rlimits:
            chain += ["prlimit", *rlimits, "--"]
        if self.identity.uid is not None:
            chain += ["setpriv", f"--reuid={self.identity.uid}", f"--regid={self.identity.gid}",
                      "--clear-groups", "--no-new-privs", "--"]
        if self.use_bwrap:
            chain += self._bwrap_args()
        else:
            lines.append(f"cd {shlex.quote(self.workdir)}")
        chain += self.argv
        lines.append("exec " + shlex.join(chain))
        return "\n".join(lines)

    def _rlimits(self) -> list[str]:
        out = []
        if self.limits.files:
            out.append(f"--nofile={self.limits.files}:{self.limits.files}")
        if not self.cgroup_procs:
            # No cgroups: the per-user process count and address space stand in.
            if self.limits.processes and self.identity.uid is not None:
                out.append(f"--nproc={self.limits.processes}:{self.limits.processes}")
            if self.limits.memory:
                out.append(f"--as={self.limits.memory}:{self.limits.memory}")
        return out

    def _bwrap_args(self) -> list[str]:
        bwrap = bwrap_path()
        assert bwrap is not None
        args = [bwrap]
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        data = str(self.data_dir)
        args += [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",  # noqa: S108 (a private tmpfs inside the sandbox)
            "--bind", data, data,
            "--chdir", self.workdir,
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "gameplane", "--new-session",
            "--json-status-fd", str(STATUS_FD),
            "--",
        ]
        return args


def untraversable_ancestor(path: Path, identity: Identity) -> Path | None:
    """The first ancestor of ``path`` the workload's user cannot enter, if any.

    bwrap resolves bind sources as the workload's user (and without bwrap the
    workload opens them itself), so every ancestor needs search permission for
    "others" (instance uids own nothing up there)."""
    if identity.uid is None:
        return None
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid != identity.uid and not st.st_mode & 0o001:
            return parent
    return None
