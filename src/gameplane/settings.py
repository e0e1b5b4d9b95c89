"""The control plane's settings: one typed object, built by :func:`load_settings`
(never at import) from ``GAMEPLANE_*`` variables over an optional TOML file.

Sources, highest priority first:

1. ``GAMEPLANE_<FIELD>`` variables (``GAMEPLANE_POLL_INTERVAL=5``);
2. the TOML file named by ``config_file`` or ``GAMEPLANE_CONFIG``, with the
   field names as top-level keys (``poll_interval = 5``); unknown keys are errors;
3. the defaults below.

Lists and ranges read from variables use the command line's forms:
``GAMEPLANE_TEMPLATES_DIRS=/a,/b`` and ``GAMEPLANE_PORT_RANGE=20000-29999``
(TOML takes ``["/a", "/b"]`` and ``"20000-29999"`` or ``[20000, 29999]``).

Every bad value fails with :class:`SettingsError`, whose message names the
variable (and the file key when the value came from the file). Outside
``development`` the secret key must be set, not ``change-me``, and at least 32
characters; in ``development`` an unset key is generated once and kept in
``<data_dir>/secret_key`` (mode 0600) so sessions survive restarts.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gameplane.errors import GameplaneError
from gameplane.templates.model import parse_size

log = logging.getLogger(__name__)

ENV_PREFIX = "GAMEPLANE_"
CONFIG_VARIABLE = "GAMEPLANE_CONFIG"
SECRET_KEY_FILE = "secret_key"  # noqa: S105 - the file name in data_dir, not a secret
MIN_SECRET_LENGTH = 32
MIN_PASSWORD_LENGTH = 8
_WEAK_SECRETS = frozenset({"", "change-me", "changeme", "changethis", "secret"})
_SECRET_FIELDS = frozenset({"secret_key", "admin_password", "smtp_password"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class SettingsError(GameplaneError):
    """A setting is missing or has a bad value; ``details`` is the message."""

    code = "invalid_settings"

    def __str__(self) -> str:
        return str(self.details)


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class PortRange(NamedTuple):
    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_host_port(value: object) -> HostPort:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` → :class:`HostPort`."""
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port in 1-65535, got {value!r}")
    return HostPort(host, int(port))


def parse_port_range(value: object) -> PortRange:
    """``"20000-29999"`` or ``[20000, 29999]`` → :class:`PortRange`."""
    if isinstance(value, str):
        first, sep, last = value.strip().partition("-")
        parts: list[object] = [first.strip(), last.strip()] if sep else []
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2:
            raise ValueError
        low, high = (int(str(p)) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected FIRST-LAST, got {value!r}") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"expected 1 <= FIRST <= LAST <= 65535, got {value!r}")
    return PortRange(low, high)


def _split_paths(value: object) -> object:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


# NoDecode: variables hold the command line's forms, not JSON.
Address = Annotated[HostPort, NoDecode, BeforeValidator(parse_host_port)]
Ports = Annotated[PortRange, NoDecode, BeforeValidator(parse_port_range)]
PathList = Annotated[list[Path], NoDecode, BeforeValidator(_split_paths)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_paths)]
UploadSize = Annotated[int, NoDecode, BeforeValidator(parse_size), Field(gt=0)]


def default_data_dir(euid: int | None = None, home: Path | None = None) -> Path:
    """``/var/lib/gameplane`` for root, else ``~/.local/share/gameplane``."""
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/gameplane")
    return (home or Path.home()) / ".local" / "share" / "gameplane"


def normalize_database_url(url: str) -> str:
    """Map the accepted spellings to the async drivers:
    ``postgres://``, ``postgresql://``, ``postgresql+asyncpg://`` → asyncpg
    (``sslmode=`` becomes asyncpg's ``ssl=``); ``sqlite://``,
    ``sqlite+pysqlite://``, ``sqlite+aiosqlite://`` → aiosqlite."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url.strip())
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {url!r}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql") and driver in ("", "asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        if not parsed.database:
            raise ValueError("a PostgreSQL URL needs a database name: postgresql://user@host:5432/NAME")
        if "sslmode" in parsed.query:
            query = dict(parsed.query)
            query["ssl"] = query.pop("sslmode")
            parsed = parsed.set(query=query)
    elif backend == "sqlite" and driver in ("", "pysqlite", "aiosqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or "
                         "postgresql://USER@HOST:PORT/NAME")
    return parsed.render_as_string(hide_password=False)


class Settings(BaseSettings):
    """Build with :func:`load_settings`. Durations are seconds."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid",
                                      validate_default=True)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default_factory=default_data_dir)
    #: empty → ``sqlite+aiosqlite:///<data_dir>/gameplane.db``
    database_url: str = ""
    listen: Address = HostPort("127.0.0.1", 8080)
    #: empty → ``http://<listen>`` (``127.0.0.1`` for a wildcard host)
    public_url: str = ""
    secret_key: SecretStr = SecretStr("")
    poll_interval: float = Field(default=5.0, gt=0)
    poll_timeout: float = Field(default=2.0, gt=0)
    poll_concurrency: int = Field(default=100, ge=1)
    provision_timeout: float = Field(default=120.0, gt=0)
    #: how often agent instances the database does not own are looked for and removed
    reconcile_interval: float = Field(default=60.0, gt=0)
    #: largest upload through the file routes (``10GiB`` or bytes); the local agent
    #: reads the same variable for its own limit (``--upload-max-bytes``)
    upload_max_bytes: UploadSize = 10 << 30
    templates_dirs: PathList = Field(default_factory=list)
    agent_listen: Address = HostPort("127.0.0.1", 7601)
    port_range: Ports = PortRange(20000, 29999)
    admin_email: str | None = None
    admin_password: SecretStr | None = None
    #: access tokens (JWT) live at most 15 minutes: revocation reaches them through
    #: their session anyway, but a short life bounds a stolen token
    access_token_ttl: int = Field(default=900, ge=30, le=900)
    #: a session (refresh-token family) dies after this long unused …
    session_idle_ttl: int = Field(default=14 * 86400, gt=0)
    #: … and this long after login, used or not
    session_max_ttl: int = Field(default=30 * 86400, gt=0)
    #: password-reset links expire within the hour
    reset_token_ttl: int = Field(default=3600, ge=60, le=3600)
    #: login, refresh, forgot and reset attempts per window, per account and per client address
    rate_limit_window: float = Field(default=60.0, gt=0)
    rate_limit_per_account: int = Field(default=10, ge=1)
    rate_limit_per_address: int = Field(default=30, ge=1)
    #: console websocket (gameplane.console): a ticket must be used within this many seconds …
    console_ticket_ttl: int = Field(default=30, ge=5, le=300)
    #: … and each user gets this many per ``rate_limit_window``
    console_tickets_per_window: int = Field(default=30, ge=1)
    #: commands a connection may send: a token bucket refilled this many times a second …
    console_command_rate: float = Field(default=5.0, gt=0)
    #: … holding at most this many
    console_command_burst: int = Field(default=10, ge=1)
    #: how often an open console re-checks its server (exists, owned, active) and session
    console_check_interval: float = Field(default=2.0, gt=0, le=30)
    #: ``token_expiring`` is sent this many seconds before the connection's access token ends
    console_expiry_warning: int = Field(default=60, ge=1)
    #: frames (up to 256 lines each) held between the agent and a slow browser
    console_queue_frames: int = Field(default=32, ge=1)
    #: how long a console retries an agent whose websocket dropped before giving up
    console_upstream_retry: float = Field(default=15.0, ge=0)
    #: addresses of reverse proxies whose X-Forwarded-For is believed (none by default)
    trusted_proxies: StrList = Field(default_factory=list)
    #: empty → mail is logged (development) or dropped with a warning (production)
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str = ""
    smtp_password: SecretStr | None = None
    smtp_from: str = "gameplane@localhost"
    smtp_starttls: bool = False

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings reads the variables and the file itself and passes them as
        # keyword arguments, so Settings() never reads os.environ behind the factory's back.
        return (init_settings,)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        if not str(value).strip() or str(value) == ".":
            raise ValueError("must be a directory path")
        return value.expanduser().absolute()

    @field_validator("templates_dirs", mode="after")
    @classmethod
    def _expand_templates_dirs(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser() for p in value]

    @field_validator("database_url", mode="after")
    @classmethod
    def _normalize_database_url(cls, value: str) -> str:
        return normalize_database_url(value) if value.strip() else ""

    @field_validator("public_url", mode="after")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"expected an http(s)://HOST[:PORT][/PATH] URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("admin_email", mode="after")
    @classmethod
    def _check_admin_email(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _EMAIL.match(value.strip()):
            raise ValueError(f"not an email address: {value!r}")
        return value.strip().lower()

    @field_validator("admin_password", mode="after")
    @classmethod
    def _check_admin_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"must be at least {MIN_PASSWORD_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _check_and_derive(self) -> Settings:
        if self.poll_timeout >= self.poll_interval:
            raise ValueError(f"{ENV_PREFIX}POLL_TIMEOUT ({self.poll_timeout:g}) must be less than "
                             f"{ENV_PREFIX}POLL_INTERVAL ({self.poll_interval:g})")
        key = self.secret_key.get_secret_value()
        if self.environment != "development" and (
                key.strip().lower() in _WEAK_SECRETS or len(key) < MIN_SECRET_LENGTH):
            raise ValueError(
                f"{ENV_PREFIX}SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} "
                f"characters outside development (got {'an empty' if not key else 'a default or short'} "
                "one); generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'")
        if self.session_idle_ttl > self.session_max_ttl:
            raise ValueError(f"{ENV_PREFIX}SESSION_IDLE_TTL ({self.session_idle_ttl}) must not exceed "
                             f"{ENV_PREFIX}SESSION_MAX_TTL ({self.session_max_ttl})")
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'gameplane.db'}"
        if not self.public_url:
            host = self.listen.host
            host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            self.public_url = f"http://{HostPort(host, self.listen.port)}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' variable source, reading a given mapping (os.environ by default)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(details=f"{CONFIG_VARIABLE}: no such file: {path}") from None
    except OSError as exc:
        raise SettingsError(details=f"{CONFIG_VARIABLE}: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(details=f"{CONFIG_VARIABLE}: {path} is not valid TOML: {exc}") from exc


def _describe(error: Mapping[str, Any], from_env: Mapping[str, Any], from_file: Mapping[str, Any],
              config_file: Path | None) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    loc = error.get("loc") or ()
    if not loc:
        return message
    field = str(loc[0])
    variable = f"{ENV_PREFIX}{field.upper()}"
    if error.get("type") == "extra_forbidden":
        return f"unknown setting {field!r} in {config_file}"
    if field not in _SECRET_FIELDS and "got " not in message and "input" in error:
        message = f"{message} (got {error['input']!r})"
    if field in from_env or field not in from_file:
        return f"{variable}: {message}"
    return f"{variable} ({field!r} in {config_file}): {message}"


def load_settings(env: Mapping[str, str] | None = None, config_file: str | os.PathLike[str] | None = None
                  ) -> Settings:
    """Read the settings from ``env`` (default ``os.environ``) over ``config_file``
    (default ``$GAMEPLANE_CONFIG``, none when unset). Raises :class:`SettingsError`.

    In development, an unset secret key is read from, or generated into,
    ``<data_dir>/secret_key`` (0600), creating ``data_dir`` (0700) if needed."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if config_file is None:
        config_file = environ.get(CONFIG_VARIABLE) or None
    path = Path(config_file).expanduser() if config_file is not None else None
    from_file = _read_config_file(path) if path is not None else {}
    from_env = _MappingEnvSource(Settings, environ)()
    try:
        settings = Settings(**{**from_file, **from_env})
    except ValidationError as exc:
        messages = [_describe(e, from_env, from_file, path) for e in exc.errors()]
        raise SettingsError(details="; ".join(messages)) from None
    if not settings.secret_key.get_secret_value():
        settings.secret_key = SecretStr(read_or_create_secret_key(settings.data_dir / SECRET_KEY_FILE))
    return settings


def read_or_create_secret_key(path: Path) -> str:
    """The key kept in ``path``, created (random, 0600) if missing. Safe against a
    concurrent creator: the file appears whole, through a hard link, or not at all."""
    try:
        return _read_secret_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                log.info("generated a development secret key in %s", path)
            except FileExistsError:
                pass  # another process won the race: use its key
        finally:
            os.unlink(tmp)
        return _read_secret_key(path)
    except OSError as exc:
        raise SettingsError(details=f"{ENV_PREFIX}SECRET_KEY is unset and {path} cannot be created: "
                                    f"{exc.strerror or exc}") from exc


def _read_secret_key(path: Path) -> str:
    try:
        key = path.read_text().strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SettingsError(details=f"cannot read the secret key file {path}: {exc.strerror}") from exc
    if len(key) < MIN_SECRET_LENGTH:
        raise SettingsError(details=f"the secret key in {path} is shorter than {MIN_SECRET_LENGTH} "
                                    "characters: delete the file to generate a new one")
    if mode & 0o077:
        log.warning("secret key file %s was mode %o; setting it to 0600", path, mode)
        path.chmod(0o600)
    return key
