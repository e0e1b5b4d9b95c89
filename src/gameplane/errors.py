"""One error type for the whole project, rendered as the envelope
``{"error": "<code>", "details": <any>}`` by every HTTP surface.

Exception tree::

    GameplaneError              code, HTTP status, details
    ├── BadRequest              400  malformed input
    ├── Unauthorized            401  missing or wrong bearer token (``WWW-Authenticate: Bearer``)
    ├── Forbidden               403  authenticated, but not allowed (admin routes)
    ├── NotFound                404  unknown instance, route or file, or another user's
    ├── Conflict                409  busy, not running, already running
    ├── PayloadTooLarge         413  an upload over a size limit or the instance's disk quota
    ├── Unprocessable           422  well-formed input that cannot be honoured
    ├── RateLimited             429  too many attempts (``Retry-After``)
    ├── NotImplementedYet       501  contract routes whose issue has not landed
    ├── Unavailable             503  a dependency (console pipe, agent) is not there
    └── InsufficientStorage     507  the disk is (or would be) full

Library exceptions are translated at the boundary with ``raise X from exc``.
"""

from __future__ import annotations

from typing import Any


class GameplaneError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, code: str | None = None, details: Any = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None):
        self.code = code or type(self).code
        self.details = details
        if status is not None:
            self.status = status
        #: extra response headers (``WWW-Authenticate``, ``Retry-After``)
        self.headers: dict[str, str] = {**self.default_headers(), **(headers or {})}
        super().__init__(f"{self.code}: {details!r}")

    def default_headers(self) -> dict[str, str]:
        return {}

    def envelope(self) -> dict[str, Any]:
        return {"error": self.code, "details": self.details}


class BadRequest(GameplaneError):
    status = 400
    code = "bad_request"


class Unauthorized(GameplaneError):
    status = 401
    code = "unauthorized"

    def default_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(GameplaneError):
    status = 403
    code = "forbidden"


class NotFound(GameplaneError):
    status = 404
    code = "not_found"


class Conflict(GameplaneError):
    status = 409
    code = "conflict"


class PayloadTooLarge(GameplaneError):
    status = 413
    code = "too_large"


class Unprocessable(GameplaneError):
    status = 422
    code = "unprocessable"


class RateLimited(GameplaneError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: float, details: Any = None):
        # Whole seconds, rounded up: a client retrying after exactly this long succeeds.
        seconds = max(1, int(-(-retry_after // 1)))
        super().__init__(details={"retryAfter": seconds, **(details or {})},
                         headers={"Retry-After": str(seconds)})


class NotImplementedYet(GameplaneError):
    status = 501
    code = "not_implemented"


class Unavailable(GameplaneError):
    status = 503
    code = "unavailable"


class TemplateError(Unprocessable):
    """A template file or an instance's variables do not validate."""

    code = "invalid_template"


class InsufficientStorage(GameplaneError):
    status = 507
    code = "insufficient_storage"
