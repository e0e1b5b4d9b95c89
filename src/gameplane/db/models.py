"""Tables of the control plane. Every change here needs a migration in
``gameplane/db/migrations/versions/``; ``tests/db/test_migrations.py`` fails
while the two disagree.

Conventions:

- datetimes are :class:`UTCDateTime`: aware in Python, UTC in the database
  (``timestamptz`` on PostgreSQL; a naive UTC string on SQLite, returned aware);
  a naive datetime is refused when bound;
- JSON columns are ``JSON`` on SQLite and ``JSONB`` on PostgreSQL. They do not
  track in-place mutation: assign a new value (``inst.state = {...}``);
- enumerations are strings guarded by CHECK constraints (no PostgreSQL enum
  types to migrate); their values are the ``Literal`` aliases below.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

Role = Literal["admin", "user"]
InstanceKind = Literal["game", "dev"]
Lifecycle = Literal["provisioning", "active", "failed", "deleting", "suspended"]

ROLES: tuple[Role, ...] = get_args(Role)
INSTANCE_KINDS: tuple[InstanceKind, ...] = get_args(InstanceKind)
LIFECYCLES: tuple[Lifecycle, ...] = get_args(Lifecycle)

INSTANCE_ID_LENGTH = 12
INSTANCE_ID_MAX = 20
_ID_FIRST = "abcdefghijklmnopqrstuvwxyz"
_ID_REST = _ID_FIRST + "0123456789"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_user_id() -> str:
    return str(uuid.uuid4())


def new_instance_id() -> str:
    """12 characters of ``[a-z0-9]``, starting with a letter: a valid agent
    instance id, DNS label and path segment (~3.4e18 values)."""
    rest = "".join(secrets.choice(_ID_REST) for _ in range(INSTANCE_ID_LENGTH - 1))
    return secrets.choice(_ID_FIRST) + rest


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as UTC; always read back aware, in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: "
                             "use an aware one (datetime.now(UTC))")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store the UTC wall time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_type(*, none_as_null: bool = False) -> TypeEngine[Any]:
    """``JSON``, as ``JSONB`` on PostgreSQL. ``none_as_null``: Python ``None`` is SQL NULL
    (else the JSON value ``null``)."""
    return JSON(none_as_null=none_as_null).with_variant(JSONB(none_as_null=none_as_null), "postgresql")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_one_of("role", ROLES), name="role"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_user_id)
    #: stored lowercased (see gameplane.db.users.normalize_email): unique case-insensitively
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, email={self.email!r}, role={self.role!r})"


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        # NULL owners are distinct from each other: ownerless names are not unique.
        Index("uq_instances_owner_id_kind_name", "owner_id", "kind", "name", unique=True),
        CheckConstraint(_one_of("kind", INSTANCE_KINDS), name="kind"),
        CheckConstraint(_one_of("lifecycle", LIFECYCLES), name="lifecycle"),
    )

    #: :func:`new_instance_id`; also the instance id on its agent
    id: Mapped[str] = mapped_column(String(INSTANCE_ID_MAX), primary_key=True, default=new_instance_id)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[InstanceKind] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(String(64))
    variables: Mapped[dict[str, Any]] = mapped_column(json_type(), default=dict)
    #: port name → number
    ports: Mapped[dict[str, int]] = mapped_column(json_type(), default=dict)
    provider: Mapped[str] = mapped_column(String(32), default="local")
    node: Mapped[str | None] = mapped_column(String(255))
    #: the agent base URL (``http://host:port`` or ``http://host:port/i/<id>``)
    agent_url: Mapped[str | None] = mapped_column(String(2048))
    #: plaintext bearer token the API presents to the agent (the agent keeps its hash)
    agent_token: Mapped[str] = mapped_column(String(255))
    lifecycle: Mapped[Lifecycle] = mapped_column(String(16), default="provisioning")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    #: latest API-normalized state (DESIGN section 4); NULL before the first poll
    state: Mapped[dict[str, Any] | None] = mapped_column(json_type(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, server_default=func.now())
    provision_deadline: Mapped[datetime | None]

    def __repr__(self) -> str:
        return (f"Instance(id={self.id!r}, kind={self.kind!r}, name={self.name!r}, "
                f"lifecycle={self.lifecycle!r})")


class Event(Base):
    """An append-only record of a state change. ``instance_id`` is deliberately not a
    foreign key: events outlive the instance they describe."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "instance_id", "id"),)

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY autoincrements.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    instance_id: Mapped[str | None] = mapped_column(String(INSTANCE_ID_MAX))
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(json_type(), default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, instance_id={self.instance_id!r}, kind={self.kind!r})"


# -- accounts and access (gameplane.auth) ----------------------------------------------------------
# Every secret below (refresh token, reset token, API key) is stored as the SHA-256 of a value
# with at least 256 random bits: a slow hash adds nothing against guessing such a value, and a
# fast one keeps the lookup a single indexed equality.

TOKEN_HASH_LENGTH = 64  # hex SHA-256


class AuthSession(Base):
    """One login: a family of refresh tokens, each replacing the previous one. Access
    tokens name it (``sid``), so revoking it ends them too."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_user_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: the last refresh; the session dies ``session_idle_ttl`` after it
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: absolute end (``session_max_ttl`` after login)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    #: logout, logout_all, token_reuse, password_changed, password_reset
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(TOKEN_HASH_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: set once, atomically, by the refresh that consumes it; a second use is a reuse
    used_at: Mapped[datetime | None]


class PasswordReset(Base):
    __tablename__ = "password_resets"

    token_hash: Mapped[str] = mapped_column(String(TOKEN_HASH_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    #: used, superseded by a newer token, or voided by a password change
    used_at: Mapped[datetime | None]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_user_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    #: the key's first characters, shown in listings so the user can tell keys apart
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(TOKEN_HASH_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """A security event. ``user_id`` is deliberately not a foreign key: the log
    outlives the account it describes."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(36), index=True)
    #: the client address the request came from
    address: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(json_type(), default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsoleTicket(Base):
    """A single-use pass to one server's console websocket (``gameplane.console.tickets``).
    ``instance_id`` is deliberately not a foreign key: a ticket for a deleted server is
    refused by the server check anyway, and deleting a server must not wait on tickets."""

    __tablename__ = "console_tickets"

    token_hash: Mapped[str] = mapped_column(String(TOKEN_HASH_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[str] = mapped_column(String(INSTANCE_ID_MAX))
    #: the login session of the access token that asked for it (``sid``) …
    session_id: Mapped[str | None] = mapped_column(String(36))
    #: … or the API key that did; exactly one of the two is set
    api_key_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: the ticket must be used before this
    expires_at: Mapped[datetime] = mapped_column(index=True)
    #: when the access token behind it expires (NULL for an API key): the connection's end
    auth_expires_at: Mapped[datetime | None]
    #: set once, atomically, by the connection that consumes it
    used_at: Mapped[datetime | None]
