"""Settings: defaults, sources and their precedence, and every refusal naming its variable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gameplane.settings import (
    HostPort,
    PortRange,
    SettingsError,
    default_data_dir,
    load_settings,
    normalize_database_url,
)

GOOD_KEY = "k" * 48


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    return {"GAMEPLANE_DATA_DIR": str(data_dir)}


def _refused(env: dict[str, str], config_file: Path | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(env, config_file)
    assert info.value.code == "invalid_settings"
    return str(info.value)


def test_defaults(env: dict[str, str], data_dir: Path) -> None:
    s = load_settings(env)
    assert s.environment == "development"
    assert s.data_dir == data_dir
    assert s.database_url == f"sqlite+aiosqlite:///{data_dir}/gameplane.db"
    assert s.listen == HostPort("127.0.0.1", 8080) and str(s.listen) == "127.0.0.1:8080"
    assert s.public_url == "http://127.0.0.1:8080"
    assert (s.poll_interval, s.poll_timeout, s.poll_concurrency, s.provision_timeout) == (5, 2, 100, 120)
    assert s.templates_dirs == []
    assert s.agent_listen == HostPort("127.0.0.1", 7601)
    assert s.port_range == PortRange(20000, 29999) and 20000 in s.port_range and 30000 not in s.port_range
    assert s.admin_email is None and s.admin_password is None
    assert len(s.secret_key.get_secret_value()) >= 32


def test_default_data_dir_depends_on_root() -> None:
    assert default_data_dir(euid=0) == Path("/var/lib/gameplane")
    assert default_data_dir(euid=1000, home=Path("/home/u")) == Path("/home/u/.local/share/gameplane")


def test_os_environ_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("GAMEPLANE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("GAMEPLANE_POLL_CONCURRENCY", "7")
    monkeypatch.delenv("GAMEPLANE_CONFIG", raising=False)
    assert load_settings().poll_concurrency == 7


def test_values_are_parsed_from_variables(env: dict[str, str], tmp_path: Path) -> None:
    s = load_settings({**env, "GAMEPLANE_LISTEN": "0.0.0.0:9000", "GAMEPLANE_AGENT_LISTEN": "[::1]:7700",
                       "GAMEPLANE_PORT_RANGE": "30000-30099",
                       "GAMEPLANE_TEMPLATES_DIRS": f"{tmp_path}/a, ~/b",
                       "GAMEPLANE_POLL_INTERVAL": "10", "GAMEPLANE_POLL_TIMEOUT": "2.5",
                       "GAMEPLANE_ADMIN_EMAIL": " Admin@Example.com", "GAMEPLANE_ADMIN_PASSWORD": "hunter22",
                       "GAMEPLANE_UNRELATED": "ignored", "GAMEPLANE_NODE": "1"})
    assert s.listen == HostPort("0.0.0.0", 9000)
    assert s.public_url == "http://127.0.0.1:9000", "a wildcard listen address is not a URL to give out"
    assert s.agent_listen == HostPort("::1", 7700) and str(s.agent_listen) == "[::1]:7700"
    assert s.port_range == PortRange(30000, 30099) and len(s.port_range) == 100
    assert s.templates_dirs == [tmp_path / "a", Path.home() / "b"]
    assert (s.poll_interval, s.poll_timeout) == (10, 2.5)
    assert s.admin_email == "admin@example.com"
    assert s.admin_password is not None and s.admin_password.get_secret_value() == "hunter22"


def test_variables_win_over_the_config_file(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "gameplane.toml"
    config.write_text('poll_interval = 30\npoll_timeout = 10\nlisten = "127.0.0.1:9999"\n'
                      'templates_dirs = ["/srv/templates"]\nport_range = [40000, 40010]\n'
                      'public_url = "https://play.example.com/"\n')
    s = load_settings({**env, "GAMEPLANE_CONFIG": str(config), "GAMEPLANE_POLL_INTERVAL": "20"})
    assert s.poll_interval == 20, "the variable wins"
    assert s.poll_timeout == 10 and s.listen == HostPort("127.0.0.1", 9999), "the file fills the rest"
    assert s.templates_dirs == [Path("/srv/templates")] and s.port_range == PortRange(40000, 40010)
    assert s.public_url == "https://play.example.com"
    assert load_settings(env, config_file=config).poll_interval == 30, "config_file= works too"


def test_config_file_problems_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    assert "no such file" in _refused({**env, "GAMEPLANE_CONFIG": str(tmp_path / "missing.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("poll_interval = = 3\n")
    assert "not valid TOML" in _refused(env, bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("poll_intreval = 3\n")
    assert _refused(env, typo) == f"unknown setting 'poll_intreval' in {typo}"
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('listen = "nowhere"\n')
    assert _refused(env, wrong).startswith(f"GAMEPLANE_LISTEN ('listen' in {wrong}): expected HOST:PORT")


@pytest.mark.parametrize("key", ["", "change-me", "short-but-not-default", "x" * 31])
def test_production_refuses_a_missing_default_or_short_secret_key(env: dict[str, str], key: str) -> None:
    message = _refused({**env, "GAMEPLANE_ENVIRONMENT": "production", "GAMEPLANE_SECRET_KEY": key})
    assert message.startswith("GAMEPLANE_SECRET_KEY must be set") and (not key or key not in message)


def test_production_accepts_a_long_secret_key_and_writes_no_file(env: dict[str, str], data_dir: Path) -> None:
    s = load_settings({**env, "GAMEPLANE_ENVIRONMENT": "production", "GAMEPLANE_SECRET_KEY": GOOD_KEY})
    assert s.secret_key.get_secret_value() == GOOD_KEY
    assert GOOD_KEY not in repr(s)
    assert not (data_dir / "secret_key").exists()


def test_development_generates_and_keeps_a_private_secret_key(env: dict[str, str], data_dir: Path) -> None:
    first = load_settings(env).secret_key.get_secret_value()
    key_file = data_dir / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert key_file.read_text().strip() == first and len(first) >= 32
    assert load_settings(env).secret_key.get_secret_value() == first, "reused, not regenerated"
    assert [p.name for p in data_dir.iterdir()] == ["secret_key"], "no temporary files left"


def test_development_refuses_a_truncated_secret_key_file(env: dict[str, str], data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "secret_key").write_text("short\n")
    assert "shorter than 32" in _refused(env)


def test_development_tightens_a_readable_secret_key_file(env: dict[str, str], data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "secret_key").write_text(GOOD_KEY)
    os.chmod(data_dir / "secret_key", 0o644)
    assert load_settings(env).secret_key.get_secret_value() == GOOD_KEY
    assert stat.S_IMODE((data_dir / "secret_key").stat().st_mode) == 0o600


@pytest.mark.parametrize(("interval", "timeout"), [("5", "5"), ("5", "7")])
def test_poll_timeout_must_be_below_poll_interval(env: dict[str, str], interval: str, timeout: str) -> None:
    message = _refused({**env, "GAMEPLANE_POLL_INTERVAL": interval, "GAMEPLANE_POLL_TIMEOUT": timeout})
    assert message == (f"GAMEPLANE_POLL_TIMEOUT ({timeout}) must be less than "
                       f"GAMEPLANE_POLL_INTERVAL ({interval})")


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("GAMEPLANE_LISTEN", "8080", "expected HOST:PORT"),
    ("GAMEPLANE_LISTEN", "localhost:99999", "expected HOST:PORT"),
    ("GAMEPLANE_AGENT_LISTEN", ":7601", "expected HOST:PORT"),
    ("GAMEPLANE_DATABASE_URL", "mysql://db/gameplane", "unsupported database 'mysql'"),
    ("GAMEPLANE_DATABASE_URL", "not a url", "not a database URL"),
    ("GAMEPLANE_DATABASE_URL", "postgresql://localhost", "needs a database name"),
    ("GAMEPLANE_PUBLIC_URL", "ftp://example.com", "expected an http(s)"),
    ("GAMEPLANE_PORT_RANGE", "30000-20000", "expected 1 <= FIRST <= LAST <= 65535"),
    ("GAMEPLANE_PORT_RANGE", "lots", "expected FIRST-LAST"),
    ("GAMEPLANE_POLL_INTERVAL", "soon", "valid number"),
    ("GAMEPLANE_POLL_CONCURRENCY", "0", "greater than or equal to 1"),
    ("GAMEPLANE_ENVIRONMENT", "staging", "'development' or 'production'"),
    ("GAMEPLANE_ADMIN_EMAIL", "admin", "not an email address"),
    ("GAMEPLANE_ADMIN_PASSWORD", "short", "at least 8 characters"),
])
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], variable: str, value: str,
                                                    expected: str) -> None:
    message = _refused({**env, variable: value})
    assert message.startswith(f"{variable}: ") and expected in message
    if variable == "GAMEPLANE_ADMIN_PASSWORD":
        assert value not in message, "secrets are not echoed"


def test_empty_optional_variables_count_as_unset(env: dict[str, str]) -> None:
    s = load_settings({**env, "GAMEPLANE_ADMIN_EMAIL": "", "GAMEPLANE_ADMIN_PASSWORD": "",
                       "GAMEPLANE_DATABASE_URL": "", "GAMEPLANE_PUBLIC_URL": "",
                       "GAMEPLANE_TEMPLATES_DIRS": ""})
    assert s.admin_email is None and s.admin_password is None and s.templates_dirs == []
    assert s.database_url.startswith("sqlite+aiosqlite:///") and s.public_url == "http://127.0.0.1:8080"


def test_several_bad_values_are_reported_together(env: dict[str, str]) -> None:
    message = _refused({**env, "GAMEPLANE_LISTEN": "x", "GAMEPLANE_POLL_INTERVAL": "-1"})
    assert "GAMEPLANE_LISTEN: " in message and "GAMEPLANE_POLL_INTERVAL: " in message


@pytest.mark.parametrize(("given", "normalized"), [
    ("postgresql://u:p@db:5432/gp", "postgresql+asyncpg://u:p@db:5432/gp"),
    ("postgres://u@db/gp", "postgresql+asyncpg://u@db/gp"),
    ("postgresql+asyncpg://u@db/gp", "postgresql+asyncpg://u@db/gp"),
    ("postgresql://u@db/gp?sslmode=require", "postgresql+asyncpg://u@db/gp?ssl=require"),
    ("sqlite:////var/lib/gameplane/gp.db", "sqlite+aiosqlite:////var/lib/gameplane/gp.db"),
    ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
])
def test_database_urls_are_normalized_to_async_drivers(env: dict[str, str], given: str,
                                                       normalized: str) -> None:
    assert normalize_database_url(given) == normalized
    assert load_settings({**env, "GAMEPLANE_DATABASE_URL": given}).database_url == normalized
