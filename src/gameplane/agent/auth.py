"""Bearer tokens. The agent never keeps a token in the clear: it stores and
compares ``sha256:<hex>`` digests, in constant time. A token file may hold the
token itself or its digest (so the API can hand an agent only the hash)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from gameplane.errors import Unauthorized

PREFIX = "sha256:"


def hash_token(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode()).hexdigest()


def normalize_hash(value: str) -> str:
    """Accept a digest as ``sha256:<hex>``; anything else is taken as a token."""
    value = value.strip()
    if value.startswith(PREFIX) and len(value) == len(PREFIX) + 64:
        int(value[len(PREFIX):], 16)
        return value.lower()
    if not value:
        raise ValueError("empty token")
    return hash_token(value)


def read_token_file(path: Path) -> str:
    """The digest of the token in ``path``."""
    return normalize_hash(path.read_text())


def check_bearer(header: str | None, expected_hash: str) -> None:
    if not header:
        raise Unauthorized("missing_token", {"reason": "Authorization: Bearer <token> required"})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("invalid_token", {"reason": "expected a Bearer token"})
    if not hmac.compare_digest(hash_token(token.strip()), expected_hash):
        raise Unauthorized("invalid_token", {"reason": "token not valid for this instance"})
