"""The instances one agent process hosts: found again from the data dir at
start, created and deleted on request (node mode), each with its own
unprivileged uid and ports that collide with no other instance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gameplane.agent.backups.manager import BackupManager, BackupSettings
from gameplane.agent.files.datadir import sweep_uploads
from gameplane.agent.instance import InstanceConfig, InstanceFiles, check_instance_id, read_json
from gameplane.agent.supervisor import Supervisor
from gameplane.errors import Conflict, GameplaneError, NotFound, Unprocessable
from gameplane.net import port_free
from gameplane.templates import load_template

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UidRange:
    """Per-instance uids are taken from here: well above login users and the
    ranges distributions hand out, so they map to no account."""

    base: int = 300_000
    count: int = 100_000


class Registry:
    def __init__(self, data_dir: Path, template_dirs: list[Path], uids: UidRange = UidRange(),
                 use_cgroups: bool | None = None, backup: BackupSettings | None = None):
        self.data_dir = data_dir
        self.instances_dir = data_dir / "instances"
        self.template_dirs = template_dirs
        self.uids = uids
        self.use_cgroups = use_cgroups
        self.instances: dict[str, Supervisor] = {}
        self.backup_settings = backup or BackupSettings()
        self.backups: dict[str, BackupManager] = {}
        self.broken: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._sweep: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Find every instance in the data dir; reattach to running workloads."""
        started = time.time()
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        for root in sorted(self.instances_dir.iterdir()):
            config_data = read_json(root / "instance.json")
            if not config_data:
                continue
            try:
                config = InstanceConfig.from_json(config_data)
                files = InstanceFiles(root, config, self.template_dirs)
            except (GameplaneError, TypeError, ValueError) as exc:
                log.error("instance %s cannot be loaded: %s", root.name, exc)
                self.broken[root.name] = str(exc)
                continue
            supervisor = Supervisor(files, self.use_cgroups)
            self.instances[config.id] = supervisor
            manager = self.backups[config.id] = BackupManager(supervisor, self.backup_settings)
            # Before the supervisor looks at the data dir: a killed restore is resolved first.
            start_again = manager.recover()
            await supervisor.recover()
            if start_again and supervisor.workload is None and supervisor.busy is None:
                try:
                    supervisor.request_start()
                except GameplaneError as exc:
                    log.error("instance %s: not started after an interrupted restore: %s", config.id, exc)
        self._sweep = asyncio.create_task(asyncio.to_thread(self._sweep_uploads, started))

    def _sweep_uploads(self, started: float) -> None:
        for instance_id, supervisor in list(self.instances.items()):
            try:
                swept = sweep_uploads(supervisor.files.paths.data, started)
            except OSError as exc:  # a data dir swapped by a restore meanwhile: next start
                log.warning("instance %s: interrupted uploads not swept: %s", instance_id, exc)
                continue
            if swept:
                log.info("instance %s: removed %d interrupted upload(s)", instance_id, swept)

    def backup_manager(self, instance_id: str) -> BackupManager:
        self.get(instance_id)
        return self.backups[instance_id]

    def get(self, instance_id: str) -> Supervisor:
        try:
            return self.instances[instance_id]
        except KeyError:
            raise NotFound("instance_not_found", {"id": instance_id}) from None

    async def create(self, instance_id: str, template: str, token_hash: str,
                     variables: dict[str, str] | None = None,
                     ports: dict[str, int] | None = None) -> Supervisor:
        check_instance_id(instance_id)
        async with self._lock:
            if instance_id in self.instances or (self.instances_dir / instance_id).exists():
                raise Conflict("instance_exists", {"id": instance_id})
            spec = load_template(template, self.template_dirs)
            config = InstanceConfig(
                id=instance_id, template=template, token_hash=token_hash,
                variables=dict(variables or {}),
                ports=self._assign_ports(spec.ports, dict(ports or {})),
                uid=self._allocate_uid() if os.geteuid() == 0 else None,
            )
            root = self.instances_dir / instance_id
            files = InstanceFiles(root, config, self.template_dirs)
            try:
                files.save_config()
                await asyncio.to_thread(files.install)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            supervisor = Supervisor(files, self.use_cgroups)
            self.instances[instance_id] = supervisor
            self.backups[instance_id] = BackupManager(supervisor, self.backup_settings)
            return supervisor

    async def delete(self, instance_id: str) -> None:
        supervisor = self.get(instance_id)
        with contextlib.suppress(Conflict):
            supervisor.kill()
        if supervisor.workload is not None:
            await supervisor.workload.wait()
        await supervisor.shutdown()
        del self.instances[instance_id]
        self.backups.pop(instance_id, None)
        await asyncio.to_thread(shutil.rmtree, supervisor.files.paths.root, True)

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.shutdown() for s in self.instances.values()))

    def _used_ports(self) -> set[int]:
        return {p for s in self.instances.values() for p in s.files.config.ports.values()}

    def _assign_ports(self, declared: dict[str, Any], given: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise Unprocessable("invalid_ports", {"unknown": unknown})
        used = self._used_ports()
        ports: dict[str, int] = {}
        for name, spec in declared.items():
            port = given.get(name)
            if port is not None:
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    raise Unprocessable("invalid_ports", {"port": name, "value": port})
                if port in used or port in ports.values():
                    raise Conflict("port_in_use", {"port": name, "number": port})
            elif spec.default and spec.default not in used and spec.default not in ports.values() \
                    and port_free(spec.default, spec.protocol):
                port = spec.default
            else:
                port = free_port(spec.protocol, used | set(ports.values()))
            ports[name] = port
        return ports

    def _allocate_uid(self) -> int:
        taken = {s.files.config.uid for s in self.instances.values()}
        for root in self.instances_dir.iterdir():
            taken.add(read_json(root / "instance.json").get("uid"))
        running = _uids_with_processes()
        for uid in range(self.uids.base, self.uids.base + self.uids.count):
            if uid in taken or uid in running:
                continue
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return uid
        raise Conflict("no_free_uid", {"range": [self.uids.base, self.uids.base + self.uids.count]})


def free_port(protocol: str, avoid: set[int]) -> int:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("0.0.0.0", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise Conflict("no_free_port", {"protocol": protocol})


def _uids_with_processes() -> set[int]:
    uids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                uids.add(entry.stat().st_uid)
    return uids
