"""Access tokens (JWT) and the opaque secrets (refresh tokens, reset tokens, API keys).

Access tokens are HS256 JWTs, pinned: decoding accepts only HS256 (so ``alg:
none`` and every other algorithm are refused), requires every claim, and checks
issuer (the public URL), audience (``gameplane-api``) and ``typ`` (``access``),
so no other token — a reset token, a refresh token, a JWT minted for another
purpose — passes as an access token. ``sid`` names the session (refresh
family): the caller checks it is still alive on every request.

The signing key is derived from ``secret_key`` for this one purpose, so a value
signed elsewhere with the secret key can never verify here.

Opaque secrets carry 256 random bits and are stored as their SHA-256 (see
``gameplane.db.models``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from gameplane.errors import Unauthorized

ALGORITHM = "HS256"
AUDIENCE = "gameplane-api"
ACCESS = "access"
_REQUIRED = ["iss", "aud", "sub", "sid", "iat", "exp", "jti", "typ"]
#: clock skew tolerated between API replicas
LEEWAY_SECONDS = 5


def new_secret(prefix: str = "") -> str:
    """256 random bits, URL-safe, after ``prefix``."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    expires_at: datetime


class AccessTokens:
    def __init__(self, secret_key: str, issuer: str, ttl: int):
        self._key = hmac.new(secret_key.encode(), b"gameplane access token v1", hashlib.sha256).digest()
        self.issuer = issuer
        self.ttl = ttl

    def issue(self, user_id: str, session_id: str, now: datetime) -> str:
        issued = int(now.timestamp())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": user_id, "sid": session_id,
                  "iat": issued, "exp": issued + self.ttl, "jti": uuid.uuid4().hex, "typ": ACCESS}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def decode(self, token: str) -> AccessClaims:
        """The claims of a valid access token; ``Unauthorized("invalid_token")`` otherwise."""
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], audience=AUDIENCE,
                                issuer=self.issuer, leeway=LEEWAY_SECONDS,
                                options={"require": _REQUIRED})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token_expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid_token") from exc
        if claims.get("typ") != ACCESS or not isinstance(claims.get("sid"), str):
            raise Unauthorized("invalid_token")
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return AccessClaims(str(claims["sub"]), claims["sid"], expires)
