"""An instance on disk: its configuration, its folders and its first install.

Layout under the agent's data dir::

    instances/<id>/instance.json   template, variables, ports, token hash, uid
    instances/<id>/data/           the workload's files (owned by its user)
    instances/<id>/run/            FIFOs, state.json, status.json, console.log, restore.json
    instances/<id>/backups/        archives and their records (see agent/backups)
    instances/<id>/.restore-*      a restore's staging and old dir, siblings of data/

``instance.json`` and ``state.json`` are written to a temp file and renamed,
so a crash mid-write never leaves a half file. Nothing here ever deletes or
overwrites a file in ``data/`` except an install file marked ``overwrite``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gameplane.errors import BadRequest, TemplateError
from gameplane.templates import Rendering, load_template, resolve_variables
from gameplane.templates.model import Template

INSTANCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def check_instance_id(instance_id: str) -> str:
    if not INSTANCE_ID.match(instance_id):
        raise BadRequest("invalid_instance_id",
                         {"id": instance_id, "expected": "lowercase letters, digits and '-', at most 63"})
    return instance_id


@dataclass
class InstanceConfig:
    id: str
    template: str
    token_hash: str
    variables: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    uid: int | None = None
    created_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class InstancePaths:
    def __init__(self, root: Path):
        self.root = root
        self.config = root / "instance.json"
        self.data = root / "data"
        self.run = root / "run"
        self.state = self.run / "state.json"
        self.console_log = self.run / "console.log"
        self.installed_marker = self.run / "installed"
        self.backups = root / "backups"
        # Siblings of data/ on the same filesystem, so a restore swaps them by rename.
        self.restore_staging = root / ".restore-staging"
        self.restore_old = root / ".restore-old"
        self.restore_journal = self.run / "restore.json"


class InstanceFiles:
    """Config, template and folders of one instance."""

    def __init__(self, root: Path, config: InstanceConfig, template_dirs: list[Path]):
        self.paths = InstancePaths(root)
        self.config = config
        self.template_dirs = template_dirs
        self.template: Template = load_template(config.template, template_dirs)
        self.variables = resolve_variables(self.template, config.variables)
        missing = sorted(set(self.template.ports) - set(config.ports))
        if missing:
            raise TemplateError("invalid_ports", {"missing": missing})

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def rendering(self) -> Rendering:
        return Rendering(str(self.paths.data), self.config.ports, self.variables)

    @property
    def cgroup_name(self) -> str:
        # Unique per agent data dir too, so two agents on one host never share a group.
        digest = hashlib.sha256(str(self.paths.root).encode()).hexdigest()[:8]
        return f"{self.id}-{digest}"

    def save_config(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.paths.config, asdict(self.config))

    @property
    def installed(self) -> bool:
        return self.paths.installed_marker.exists()

    def install(self) -> None:
        """Create the data dir and the template's install files, once.

        Existing files are left alone (never lose an instance's files) unless
        the template marks them ``overwrite``."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        # Workload users must traverse to data/ (0750, theirs); they can list nothing here.
        os.chmod(self.paths.root, 0o711)  # noqa: S103
        self.paths.run.mkdir(mode=0o700, exist_ok=True)
        self.paths.data.mkdir(mode=0o750, exist_ok=True)
        render = self.rendering.render
        for directory in self.template.install.directories:
            self.safe_path(render(directory)).mkdir(parents=True, exist_ok=True)
        for spec in self.template.install.files:
            target = self.safe_path(render(spec.path))
            if target.exists() and not spec.overwrite:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.gameplane-tmp")
            tmp.write_text(render(spec.content or ""))
            os.chmod(tmp, int(spec.mode, 8))
            os.replace(tmp, target)
        self.chown_data()
        self.paths.installed_marker.write_text(str(time.time()))

    def chown_data(self, root: Path | None = None) -> None:
        """Give the data dir (or ``root``, a restore's staging dir) to the instance's user."""
        uid = self.config.uid
        if uid is None or os.geteuid() != 0:
            return
        for dirpath, dirnames, filenames in os.walk(root or self.paths.data):
            os.chown(dirpath, uid, uid, follow_symlinks=False)
            for name in dirnames + filenames:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)

    def safe_path(self, relative: str) -> Path:
        """A path inside the data dir; ``..``, absolute paths and symlinks that
        lead out are refused."""
        data = self.paths.data.resolve()
        candidate = (data / relative).resolve()
        if candidate != data and data not in candidate.parents:
            raise BadRequest("path_outside_data_dir", {"path": relative})
        return candidate

    def data_bytes(self) -> int:
        total = 0
        for dirpath, _, filenames in os.walk(self.paths.data):
            for name in filenames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return total
