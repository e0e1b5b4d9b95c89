"""The workload template: how to install, start, stop, probe, console into and
back up one kind of workload, declared in TOML with no code.

Every section forbids unknown keys, so a typo in an operator's file is an error
at load time rather than a silently ignored setting. Placeholders
(``{data}``, ``{port.NAME}``, ``{var.NAME}``) are checked against the declared
ports and variables when the template loads; see ``docs/templates.md``.
"""

from __future__ import annotations

import re
import signal
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
PLACEHOLDER = re.compile(r"\{(data|port\.[A-Za-z0-9_-]+|var\.[A-Za-z0-9_-]+)\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(value: object) -> int:
    """``"512MiB"`` → 536870912; plain integers are bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str) or not (m := _SIZE.match(value)):
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 2GiB, 1048576)")
    unit = (m.group(2) or "").upper().removesuffix("B")
    return int(float(m.group(1)) * _UNITS[unit])


Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Port(_Strict):
    protocol: Literal["tcp", "udp"] = "tcp"
    default: int | None = Field(default=None, ge=1, le=65535)
    description: str = ""


class Variable(_Strict):
    default: str | None = None
    description: str = ""


class InstallFile(_Strict):
    path: str
    content: str | None = None
    mode: str = "0644"
    overwrite: bool = False

    @field_validator("mode")
    @classmethod
    def _octal(cls, v: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3,4}", v):
            raise ValueError("mode must be octal, e.g. 0644")
        return v


class Install(_Strict):
    directories: list[str] = []
    files: list[InstallFile] = []


class Start(_Strict):
    command: list[str] = Field(min_length=1)
    workdir: str = "{data}"
    env: dict[str, str] = {}


class Stop(_Strict):
    # One console command or several, sent in order (e.g. ["save", "quit"]).
    command: list[str] = []
    signal: str = "SIGTERM"
    timeout: float = Field(default=15.0, gt=0)
    kill_timeout: float = Field(default=10.0, gt=0)

    @field_validator("command", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        name = v.upper() if v.upper().startswith("SIG") else "SIG" + v.upper()
        if not hasattr(signal.Signals, name) or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"unknown or unusable stop signal {v!r}")
        return name


class Console(_Strict):
    type: Literal["stdin", "tcp", "none"] = "stdin"
    port: str | None = None
    password: str | None = None
    password_prompt: str | None = None
    prompt: str | None = None
    buffer_lines: int = Field(default=10_000, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _tcp_needs_port(self) -> Console:
        if self.type == "tcp" and not self.port:
            raise ValueError("console type 'tcp' needs 'port' (a port name)")
        if self.type != "tcp" and (self.port or self.password or self.password_prompt):
            raise ValueError("port, password and password_prompt only apply to console type 'tcp'")
        return self


class UdpProbe(_Strict):
    port: str
    send: str
    expect: str = ""

    @field_validator("send", "expect")
    @classmethod
    def _hex(cls, v: str) -> str:
        cleaned = re.sub(r"\s+", "", v)
        try:
            bytes.fromhex(cleaned)
        except ValueError as exc:
            raise ValueError(f"not hex bytes: {v!r}") from exc
        return cleaned


class Ready(_Strict):
    timeout: float = Field(default=60.0, gt=0)
    interval: float = Field(default=0.1, gt=0)
    log: str | None = None
    tcp: str | None = None
    udp: UdpProbe | None = None

    @field_validator("log")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(PLACEHOLDER.sub("x", v))
            except re.error as exc:
                raise ValueError(f"bad regular expression {v!r}: {exc}") from exc
        return v


class Backup(_Strict):
    paths: list[str] = ["."]
    pre: list[str] = []
    post: list[str] = []
    # A pre command such as freeciv's `save` only asks: the copy starts once this
    # line shows in the console (or fails after `pre_timeout`), not at a guess.
    pre_wait_log: str | None = None
    pre_timeout: float = Field(default=30.0, gt=0)
    # "copy": back up a running server as it is (after `pre`); "stop": stop it
    # for the copy and start it again (servers with no console to flush with).
    running: Literal["copy", "stop"] = "copy"
    engine: Literal["archive", "restic"] | None = None  # None: the agent's --backup-engine
    keep: int | None = Field(default=None, ge=1)  # None: the agent's --backup-keep
    keep_days: float | None = Field(default=None, gt=0)

    @field_validator("pre_wait_log")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"bad regular expression {v!r}: {exc}") from exc
        return v

    @field_validator("paths")
    @classmethod
    def _relative(cls, v: list[str]) -> list[str]:
        for path in v:
            if path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"backup paths are relative to the data dir, without '..': {path!r}")
        return v


class Limits(_Strict):
    memory: Size | None = None
    cpu: float | None = Field(default=None, gt=0)
    processes: int | None = Field(default=None, ge=1)
    files: int | None = Field(default=None, ge=16)
    disk: Size | None = None


class Restart(_Strict):
    policy: Literal["never", "on-failure", "always"] = "on-failure"
    max_restarts: int = Field(default=3, ge=0)
    window: float = Field(default=300.0, gt=0)
    backoff: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    clean_exit_codes: list[int] = [0]


class Sandbox(_Strict):
    user: str = "instance"
    bwrap: Literal["auto", "required", "off"] = "auto"


class Meta(_Strict):
    name: str = Field(pattern=_NAME)
    kind: Literal["game", "dev"] = "game"
    description: str = ""


class Template(_Strict):
    template: Meta
    ports: dict[str, Port] = {}
    variables: dict[str, Variable] = {}
    install: Install = Install()
    start: Start
    stop: Stop = Stop()
    console: Console = Console()
    ready: Ready = Ready()
    backup: Backup = Backup()
    limits: Limits = Limits()
    restart: Restart = Restart()
    sandbox: Sandbox = Sandbox()

    @property
    def name(self) -> str:
        return self.template.name

    @model_validator(mode="after")
    def _references(self) -> Template:
        for key in list(self.ports) + list(self.variables):
            if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
                raise ValueError(f"port and variable names use letters, digits, _ and -: {key!r}")
        texts = [*self.start.command, self.start.workdir, *self.start.env.values()]
        texts += [f.content or "" for f in self.install.files]
        texts += [f.path for f in self.install.files] + self.install.directories
        texts += [self.ready.log or "", self.console.password or "", *self.stop.command]
        for text in texts:
            for ref in PLACEHOLDER.findall(text):
                self._check_ref(ref)
        for port_ref in (self.ready.tcp, self.console.port, self.ready.udp and self.ready.udp.port):
            if port_ref and port_ref not in self.ports:
                raise ValueError(f"refers to undeclared port {port_ref!r}")
        if self.ready.tcp and self.ports[self.ready.tcp].protocol != "tcp":
            raise ValueError(f"ready.tcp names port {self.ready.tcp!r}, which is not tcp")
        if self.ready.udp and self.ports[self.ready.udp.port].protocol != "udp":
            raise ValueError(f"ready.udp names port {self.ready.udp.port!r}, which is not udp")
        if self.stop.command and self.console.type == "none":
            raise ValueError("stop.command needs a console; this template has console type 'none'")
        if (self.backup.pre or self.backup.post) and self.console.type == "none":
            raise ValueError("backup.pre and backup.post need a console; "
                             "this template has console type 'none'")
        return self

    def _check_ref(self, ref: str) -> None:
        kind, _, name = ref.partition(".")
        if kind == "port" and name not in self.ports:
            raise ValueError(f"placeholder {{{ref}}} refers to undeclared port {name!r}")
        if kind == "var" and name not in self.variables:
            raise ValueError(f"placeholder {{{ref}}} refers to undeclared variable {name!r}")
