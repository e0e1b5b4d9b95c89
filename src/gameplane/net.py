"""Network helpers shared by the agent and the API: port checks (the agent's
preflight, the local provider's placement) and the declared length of an upload."""

from __future__ import annotations

import socket

from gameplane.errors import BadRequest


def port_free(port: int, protocol: str) -> bool:
    """Whether ``port`` can be bound on all addresses. TCP sets SO_REUSEADDR so
    a port left in TIME_WAIT by a stopped server counts as free; a listener on
    any address (127.0.0.1 included) makes it taken."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def content_length(header: str | None) -> int | None:
    """An upload's declared ``Content-Length``, checked before any of the body
    is read; ``None`` for a chunked body."""
    if header is None:
        return None
    if not header.isdigit():
        raise BadRequest("invalid_content_length", {"value": header[:40]})
    return int(header)
