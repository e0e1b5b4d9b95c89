"""``gameplane`` command line. Every option also reads a ``GAMEPLANE_*``
variable (named in its ``--help`` line); the command line wins."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gameplane.errors import GameplaneError


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"GAMEPLANE_{name}", default)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"gameplane: {what} must look like NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _env_list(name: str) -> list[str]:
    value = _env(name)
    return [v for v in value.split(",") if v] if value else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gameplane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="serve the agent contract for one instance or many (--node)")
    agent.add_argument("--node", action="store_true", default=_env("NODE") in ("1", "true", "yes"),
                       help="host many instances under /i/<id> (GAMEPLANE_NODE=1)")
    agent.add_argument("--template", default=_env("TEMPLATE"),
                       help="single mode: template name or .toml path (GAMEPLANE_TEMPLATE)")
    agent.add_argument("--instance-id", default=_env("INSTANCE_ID", "default"),
                       help="single mode: the instance's id (GAMEPLANE_INSTANCE_ID, default 'default')")
    agent.add_argument("--data-dir", type=Path, default=_env("DATA_DIR"),
                       help="where instances live (GAMEPLANE_DATA_DIR)")
    agent.add_argument("--listen", type=_listen, default=_listen(_env("LISTEN", "127.0.0.1:7600") or ""),
                       help="HOST:PORT to serve on (GAMEPLANE_LISTEN, default 127.0.0.1:7600)")
    agent.add_argument("--token-file", type=Path, default=_env("TOKEN_FILE"),
                       help="file holding the bearer token or its sha256:<hex> digest "
                            "(the node token with --node) (GAMEPLANE_TOKEN_FILE)")
    agent.add_argument("--var", action="append", default=_env_list("VARS"), metavar="NAME=VALUE",
                       help="single mode: a template variable, repeatable (GAMEPLANE_VARS=a=1,b=2)")
    agent.add_argument("--port", action="append", default=_env_list("PORTS"), metavar="NAME=NUMBER",
                       help="single mode: a port assignment, repeatable (GAMEPLANE_PORTS=game=5556)")
    agent.add_argument("--templates-dir", action="append", type=Path,
                       default=[Path(p) for p in _env_list("TEMPLATES_DIRS")],
                       help="operator template folder, searched before the shipped templates, "
                            "repeatable (GAMEPLANE_TEMPLATES_DIRS=a,b)")
    agent.add_argument("--uid-base", type=int, default=int(_env("UID_BASE", "300000") or 300000),
                       help="first uid given to instances (GAMEPLANE_UID_BASE, default 300000)")
    agent.add_argument("--cgroups", choices=["auto", "off"], default=_env("CGROUPS", "auto"),
                       help="limit workloads with cgroup v1 where writable (auto), or only with "
                            "rlimits (off) (GAMEPLANE_CGROUPS)")
    agent.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                       help="debug, info, warning or error (GAMEPLANE_LOG_LEVEL)")
    agent.add_argument("--upload-max-bytes", default=_env("UPLOAD_MAX_BYTES", "10GiB"),
                       help="largest single upload into an instance's data dir, else 413 too_large; "
                            "a template's limits.disk also bounds it (GAMEPLANE_UPLOAD_MAX_BYTES, "
                            "default 10GiB)")
    _backup_options(agent)
    control_plane_commands(sub)
    return parser


def _backup_options(agent: argparse.ArgumentParser) -> None:
    agent.add_argument("--backup-engine", choices=["archive", "restic"],
                       default=_env("BACKUP_ENGINE", "archive"),
                       help="engine of new backups unless the template says ([backup] engine): archive "
                            "(tar + zstd in the instance's backups/ dir) or restic (GAMEPLANE_BACKUP_ENGINE)")
    agent.add_argument("--backup-repository", default=_env("BACKUP_REPOSITORY"),
                       help="restic repository: a path or s3:http://host:port/bucket (S3 credentials from "
                            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); default DATA_DIR/restic-repo "
                            "(GAMEPLANE_BACKUP_REPOSITORY)")
    agent.add_argument("--backup-password-file", type=Path, default=_env("BACKUP_PASSWORD_FILE"),
                       help="restic repository password file; default DATA_DIR/restic-password, "
                            "generated on first use (GAMEPLANE_BACKUP_PASSWORD_FILE)")
    agent.add_argument("--backup-keep", type=int, default=_env("BACKUP_KEEP"),
                       help="keep this many completed backups per instance, locked ones not counted "
                            "(GAMEPLANE_BACKUP_KEEP; default: all)")
    agent.add_argument("--backup-keep-days", type=float, default=_env("BACKUP_KEEP_DAYS"),
                       help="delete unlocked backups older than this (GAMEPLANE_BACKUP_KEEP_DAYS)")
    agent.add_argument("--backup-min-free", default=_env("BACKUP_MIN_FREE", "64MiB"),
                       help="free space that must remain after a backup or restore, else 507 "
                            "(GAMEPLANE_BACKUP_MIN_FREE, default 64MiB)")


def _backup_settings(args: argparse.Namespace, data_dir: Path) -> Any:
    from gameplane.agent.backups.manager import BackupSettings
    from gameplane.agent.backups.restic import ResticRepository
    from gameplane.templates.model import parse_size

    repository = args.backup_repository or str(data_dir / "restic-repo")
    return BackupSettings(
        engine=args.backup_engine,
        restic=ResticRepository(repository, args.backup_password_file, data_dir),
        keep=int(args.backup_keep) if args.backup_keep else None,
        keep_days=float(args.backup_keep_days) if args.backup_keep_days else None,
        min_free=parse_size(args.backup_min_free),
    )


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="state folder (GAMEPLANE_DATA_DIR)")
    parser.add_argument("--listen", help="HOST:PORT of the API (GAMEPLANE_LISTEN, default 127.0.0.1:8080)")
    parser.add_argument("--config", type=Path, help="TOML settings file (GAMEPLANE_CONFIG)")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                        help="debug, info, warning or error (GAMEPLANE_LOG_LEVEL)")


def control_plane_commands(sub: Any) -> None:
    up = sub.add_parser("up", help="all-in-one: API with SQLite and the local provider, first admin")
    _settings_options(up)
    api = sub.add_parser("api", help="the API process (settings from GAMEPLANE_* and --config)")
    _settings_options(api)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    _settings_options(migrate)
    admin = sub.add_parser("admin", help="manage accounts")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser("create", help="create an admin account")
    _settings_options(create)
    create.add_argument("--email", default=_env("ADMIN_EMAIL"), help="(GAMEPLANE_ADMIN_EMAIL)")
    create.add_argument("--password", default=_env("ADMIN_PASSWORD"),
                        help="(GAMEPLANE_ADMIN_PASSWORD; asked for when absent)")


def _load_settings(args: argparse.Namespace) -> Any:
    from gameplane.settings import load_settings

    env = dict(os.environ)
    if args.data_dir is not None:
        env["GAMEPLANE_DATA_DIR"] = str(args.data_dir)
    if args.listen is not None:
        env["GAMEPLANE_LISTEN"] = args.listen
    return load_settings(env, args.config)


async def _ensure_admin(settings: Any) -> str | None:
    """The first admin: from GAMEPLANE_ADMIN_EMAIL/PASSWORD, else generated.
    Returns the generated password (to print once), or None."""
    import secrets

    from sqlalchemy import select

    from gameplane.db.engine import create_engine_from_settings, create_session_factory, transaction
    from gameplane.db.models import User
    from gameplane.db.users import create_user

    engine = create_engine_from_settings(settings)
    try:
        sessions = create_session_factory(engine)
        async with transaction(sessions) as session:
            if (await session.execute(select(User.id).where(User.role == "admin"))).first():
                return None
            email = settings.admin_email or "admin@gameplane.localhost"
            given = settings.admin_password.get_secret_value() if settings.admin_password else None
            password = given or secrets.token_urlsafe(18)
            await create_user(session, email, password, role="admin")
        print(f"gameplane: admin account {email}" + ("" if given else f", password {password}"
                                                     " (shown once; change it)"), flush=True)
        return None if given else password
    finally:
        await engine.dispose()


def _serve_api(settings: Any, log_level: str) -> int:
    import uvicorn

    from gameplane.api.app import create_app

    host, port = settings.listen
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings), host=host, port=port, log_level=log_level.lower(), lifespan="on",
        ws="websockets-sansio", access_log=False,
        # The console proxy's frames are small: deflating each one halved the proxy's
        # throughput (bench/console_proxy.py), for text a terminal shows at reading speed.
        ws_per_message_deflate=False,
    ))
    asyncio.run(server.serve())
    return 0 if server.started else 1


def run_control_plane(args: argparse.Namespace) -> int:
    from gameplane.db.migrate import upgrade_sync

    settings = _load_settings(args)
    if args.command == "migrate":
        upgrade_sync(settings.database_url)
        print("gameplane: database is at the newest migration")
        return 0
    if args.command == "admin":
        import getpass

        from gameplane.db.engine import create_engine_from_settings, create_session_factory, transaction
        from gameplane.db.users import create_user

        upgrade_sync(settings.database_url)
        if not args.email:
            raise SystemExit("gameplane admin create: --email is required")
        password = args.password or getpass.getpass("password: ")

        async def create() -> None:
            engine = create_engine_from_settings(settings)
            try:
                async with transaction(create_session_factory(engine)) as session:
                    await create_user(session, args.email, password, role="admin")
            finally:
                await engine.dispose()

        asyncio.run(create())
        print(f"gameplane: admin {args.email} created")
        return 0
    upgrade_sync(settings.database_url)
    if args.command == "up":
        asyncio.run(_ensure_admin(settings))
        print(f"gameplane: control plane on {settings.public_url} (API docs at {settings.public_url}/docs)",
              flush=True)
    return _serve_api(settings, args.log_level)


def run_agent(args: argparse.Namespace) -> int:
    import uvicorn

    from gameplane.agent.app import AgentConfig, create_app
    from gameplane.agent.auth import read_token_file
    from gameplane.agent.files.routes import FileSettings
    from gameplane.agent.registry import Registry, UidRange
    from gameplane.templates.model import parse_size

    if args.data_dir is None or args.token_file is None:
        raise SystemExit("gameplane agent: --data-dir and --token-file are required")
    if not args.node and not args.template:
        raise SystemExit("gameplane agent: --template is required (or --node for many instances)")
    try:
        token_hash = read_token_file(args.token_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"gameplane agent: cannot read token file {args.token_file}: {exc}") from exc
    registry = Registry(args.data_dir.resolve(), args.templates_dir, UidRange(base=args.uid_base),
                        use_cgroups=False if args.cgroups == "off" else None,
                        backup=_backup_settings(args, args.data_dir.resolve()))
    files = FileSettings(max_upload=parse_size(args.upload_max_bytes))
    if args.node:
        config = AgentConfig(registry, node_token_hash=token_hash, files=files)
    else:
        ports = {k: int(v) for k, v in _pairs(args.port, "--port").items() if v.isdigit()}
        config = AgentConfig(registry, single_instance=args.instance_id, single_template=args.template,
                             single_token_hash=token_hash, single_variables=_pairs(args.var, "--var"),
                             single_ports=ports, files=files)
    _raise_nofile_limit()
    host, port = args.listen
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), host=host, port=port, log_level=args.log_level.lower(),
        ws="websockets-sansio", lifespan="on", access_log=False,
        # Console frames are small and go to the API on a LAN: deflating each
        # one cost a fifth of the agent's CPU while streaming.
        ws_per_message_deflate=False,
    ))
    asyncio.run(server.serve())
    return 0 if server.started else 1


def _raise_nofile_limit() -> None:
    """Each running instance holds a few descriptors (FIFOs, pidfd, sockets):
    hundreds of them outgrow the common soft limit of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        # Alembic narrates every plugin it loads at INFO; operators need its warnings only.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        if args.command == "agent":
            return run_agent(args)
        return run_control_plane(args)
    except GameplaneError as exc:
        print(f"gameplane: {exc.code}: {exc.details}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
