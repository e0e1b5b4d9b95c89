"""One error type for the whole project, rendered as the envelope
``{"error": "<code>", "details": <any>}`` by every HTTP surface.

Exception tree::

    GameplaneError              code, HTTP status, details
    ├── BadRequest              400  malformed input
    ├── Unauthorized            401  missing or wrong bearer token
    ├── NotFound                404  unknown instance, route or file
    ├── Conflict                409  busy, not running, already running
    ├── Unprocessable           422  well-formed input that cannot be honoured
    ├── NotImplementedYet       501  contract routes whose issue has not landed
    └── Unavailable             503  a dependency (console pipe, agent) is not there

Library exceptions are translated at the boundary with ``raise X from exc``.
"""

from __future__ import annotations

from typing import Any


class GameplaneError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, code: str | None = None, details: Any = None, *, status: int | None = None):
        self.code = code or type(self).code
        self.details = details
        if status is not None:
            self.status = status
        super().__init__(f"{self.code}: {details!r}")

    def envelope(self) -> dict[str, Any]:
        return {"error": self.code, "details": self.details}


class BadRequest(GameplaneError):
    status = 400
    code = "bad_request"


class Unauthorized(GameplaneError):
    status = 401
    code = "unauthorized"


class NotFound(GameplaneError):
    status = 404
    code = "not_found"


class Conflict(GameplaneError):
    status = 409
    code = "conflict"


class Unprocessable(GameplaneError):
    status = 422
    code = "unprocessable"


class NotImplementedYet(GameplaneError):
    status = 501
    code = "not_implemented"


class Unavailable(GameplaneError):
    status = 503
    code = "unavailable"


class TemplateError(Unprocessable):
    """A template file or an instance's variables do not validate."""

    code = "invalid_template"
