"""The control plane's one module for non-streaming calls to agents (DESIGN.md
section 3): health, readiness, status, power, console commands and the node
routes. The console websocket proxy and the upload proxy are streaming paths
of their own and do not go through here.

Layers, outermost first:

- ``AgentClient``: the contract's routes as methods. Reads (``GET``) are
  retried with exponential backoff and jitter on network errors and 5xx,
  never on 4xx; writes (``POST``, ``DELETE``) are never retried. Every failure
  leaves as an enveloped ``AgentError``; ``get_result`` and
  ``get_agent_ready`` instead return a typed ``AgentResult`` and never raise
  for anything the agent (or the network) did.
- ``Transport``: the seam to the HTTP library, one pooled client per
  ``AgentClient``. ``AiohttpTransport`` is the default: on this project's
  benchmark (``bench/poller_throughput.py``, 64 requests in flight) aiohttp
  costs about 0.3 ms of CPU per request, httpx 3.6 to 5.4 ms (more than ten
  times as much), and the poller's CPU floor is what decides: 5,000
  instances every 10 s fit in about a third of a core with aiohttp, in none
  with httpx. ``MockTransport`` answers from a function, for tests.

Exception tree::

    GameplaneError (gameplane.errors)       code, HTTP status, details
    └── AgentError                          a call to an agent failed
        ├── AgentUnreachable     502 agent_unreachable    connection refused, reset or closed
        ├── AgentTimeout         504 agent_timeout        no answer within the call's timeout
        ├── AgentBadResponse     502 agent_bad_response   a 5xx, a body that is not JSON, a 1xx/3xx,
        │                                                 or a 2xx without the expected shape; a 5xx
        │                                                 envelope (503 console_full) is kept in
        │                                                 details.agent
        ├── AgentAuthFailed      502 agent_auth_failed    401: the agent refused the control plane's
        │                                                 own credential (not the user's)
        ├── AgentRejected        4xx <the agent's code>   the agent's own 4xx envelope: same status,
        │                                                 same code, details kept; a 4xx without an
        │                                                 envelope gets one (code from the status)
        └── AgentNotReady        503 agent_not_ready      ``assert_agent_ready``: not semantically ready

    TransportError                          raised by a Transport, never past AgentClient
    ├── TransportConnectError               → FailureKind.UNREACHABLE
    ├── TransportTimeout                    → FailureKind.TIMEOUT
    └── TransportProtocolError              → FailureKind.BAD_RESPONSE (malformed HTTP)

Semantic readiness has one definition, ``is_agent_ready_result``: HTTP 200
and a JSON object body whose ``"ready"`` is exactly ``True``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from gameplane.errors import GameplaneError

if TYPE_CHECKING:
    import aiohttp
    import httpx
    import yarl

log = logging.getLogger(__name__)

__all__ = [
    "AgentAuthFailed",
    "AgentBadResponse",
    "AgentClient",
    "AgentEndpoint",
    "AgentError",
    "AgentNotReady",
    "AgentRejected",
    "AgentResult",
    "AgentTimeout",
    "AgentUnreachable",
    "AiohttpTransport",
    "FailureKind",
    "HttpxTransport",
    "MockRequest",
    "MockTransport",
    "RawResponse",
    "Transport",
    "TransportConnectError",
    "TransportError",
    "TransportProtocolError",
    "TransportTimeout",
    "assert_agent_ready",
    "classify",
    "is_agent_ready_result",
    "not_ready_reason",
    "raise_for_result",
]

#: How much of an unexpected body is kept in error details and logs.
SNIPPET = 300


class FailureKind(enum.StrEnum):
    """How a call to an agent failed, if it did."""

    NONE = "none"  # the agent answered, in the contract's terms (which may be a 4xx)
    UNREACHABLE = "unreachable"  # no connection: refused, reset, closed before the answer
    TIMEOUT = "timeout"  # connected (or not) but no answer within the timeout
    AUTH = "auth"  # 401: the control plane's token was refused
    BAD_RESPONSE = "bad_response"  # an answer outside the contract: 5xx, not JSON, malformed HTTP


# -- errors ---------------------------------------------------------------------------------------
class AgentError(GameplaneError):
    """A call to an agent failed. ``agent_status`` is the agent's HTTP status, if it answered."""

    status = 502
    code = "agent_error"
    kind: FailureKind = FailureKind.BAD_RESPONSE

    def __init__(self, code: str | None = None, details: Any = None, *, status: int | None = None,
                 agent_status: int | None = None):
        super().__init__(code, details, status=status)
        self.agent_status = agent_status


class AgentUnreachable(AgentError):
    status = 502
    code = "agent_unreachable"
    kind = FailureKind.UNREACHABLE


class AgentTimeout(AgentError):
    status = 504
    code = "agent_timeout"
    kind = FailureKind.TIMEOUT


class AgentBadResponse(AgentError):
    status = 502
    code = "agent_bad_response"
    kind = FailureKind.BAD_RESPONSE


class AgentAuthFailed(AgentError):
    status = 502
    code = "agent_auth_failed"
    kind = FailureKind.AUTH


class AgentRejected(AgentError):
    """The agent's own 4xx answer, forwarded with its status, code and details."""

    status = 400
    code = "agent_rejected"
    kind = FailureKind.NONE


class AgentNotReady(AgentError):
    status = 503
    code = "agent_not_ready"


class TransportError(Exception):
    """Raised by a ``Transport``; ``AgentClient`` turns it into a ``FailureKind``."""

    kind: FailureKind = FailureKind.UNREACHABLE


class TransportConnectError(TransportError):
    kind = FailureKind.UNREACHABLE


class TransportTimeout(TransportError):
    kind = FailureKind.TIMEOUT


class TransportProtocolError(TransportError):
    kind = FailureKind.BAD_RESPONSE


# -- endpoints and results -------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentEndpoint:
    """Where one instance's contract (or a node agent's root) is, and its bearer token.

    ``base_url`` is ``http://host:port`` or ``http://host:port/i/<instance-id>``.
    The token never shows in ``repr``.
    """

    base_url: str
    token: str = field(repr=False)
    headers: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = self.base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"agent base URL must be http(s)://...: {self.base_url!r}")
        object.__setattr__(self, "base_url", base)
        object.__setattr__(self, "headers", {"Authorization": f"Bearer {self.token}"})

    def url(self, path: str) -> str:
        return self.base_url + path


@dataclass(frozen=True, slots=True)
class AgentResult:
    """One answer (or non-answer) of an agent, as data.

    ``body`` is the parsed JSON, or None (no answer, empty body, not JSON).
    ``failure`` is ``NONE`` whenever the agent answered within the contract,
    including any 4xx but 401, and ``/ready``'s ``503 {"ready": false}``.
    """

    route: str
    status_code: int | None
    body: Any
    failure: FailureKind
    detail: str | None = None  # why, when ``failure`` is not NONE
    attempts: int = 1

    @property
    def answered(self) -> bool:
        return self.status_code is not None

    @property
    def ready(self) -> bool:
        return is_agent_ready_result(self.status_code, self.body)

    def describe(self) -> str:
        """One human line: what happened."""
        if self.failure is FailureKind.NONE:
            return f"{self.route} answered HTTP {self.status_code}"
        return f"{self.route}: {self.detail or self.failure.value}"


def is_agent_ready_result(status_code: int | None, body: Any) -> bool:
    """THE semantic readiness rule (DESIGN.md section 3): HTTP 200 and a JSON
    object body with ``"ready": true``. Anything else — another status, a
    missing body, ``"ready": "true"`` or ``1`` — is not ready."""
    return status_code == 200 and isinstance(body, dict) and body.get("ready") is True


def not_ready_reason(result: AgentResult) -> str:
    """Why ``result`` is not a semantic success, in a sentence."""
    if result.failure is FailureKind.UNREACHABLE:
        return f"agent unreachable: {result.detail or 'no connection'}"
    if result.failure is FailureKind.TIMEOUT:
        return f"agent did not answer: {result.detail or 'timed out'}"
    if result.failure is FailureKind.AUTH:
        return "the agent refused the control plane's credentials (401)"
    body = result.body
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        return str(body["reason"])
    if result.failure is FailureKind.BAD_RESPONSE:
        return f"bad answer from the agent: {result.detail or 'unexpected answer'}"
    if result.status_code == 200:
        return 'the agent answered 200 without "ready": true'
    return f"the agent answered HTTP {result.status_code}"


# -- transports -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    body: bytes = b""

    @classmethod
    def json(cls, status: int, data: Any) -> RawResponse:
        return cls(status, json.dumps(data).encode())


class Transport(Protocol):
    """One pooled HTTP client. ``request`` returns whatever status came back
    and raises only ``TransportError`` subclasses (and ``CancelledError``)."""

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                      timeout: float) -> RawResponse: ...

    async def aclose(self) -> None: ...


def _os_reason(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if isinstance(seen, (BrokenPipeError, ConnectionAbortedError)):
            return "connection closed"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


class AiohttpTransport:
    """``aiohttp.ClientSession`` with one connection pool of ``pool_size``
    connections, no redirects, no decompression, no cookies. The session is
    created on first use (it must be made inside the running loop)."""

    URL_CACHE = 65536

    def __init__(self, pool_size: int = 100, keepalive_timeout: float = 30.0):
        self.pool_size = pool_size
        self.keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, yarl.URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=0,
                                         keepalive_timeout=self.keepalive_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"), raise_for_status=False)
        return self._session

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                      timeout: float) -> RawResponse:
        import aiohttp
        import yarl

        session = self._session or self._open()
        # Parsed once per URL: the poller asks the same few URLs per instance every cycle.
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= self.URL_CACHE:
                self._urls.clear()
            parsed = self._urls[url] = yarl.URL(url)
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.request(method, parsed, headers=headers, data=body, timeout=client_timeout,
                                       allow_redirects=False) as response:
                return RawResponse(response.status, await response.read())
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise TransportTimeout(f"no answer within {timeout:g}s") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise TransportConnectError("the agent closed the connection") from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportConnectError(_os_reason(exc.os_error)) from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise TransportConnectError(_os_reason(exc)) from exc
        except aiohttp.ClientError as exc:
            raise TransportProtocolError(f"malformed HTTP answer: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class HttpxTransport:
    """``httpx.AsyncClient`` with one pool of ``pool_size`` connections: the
    measured alternative (see the module docstring)."""

    def __init__(self, pool_size: int = 100):
        import httpx

        self._client: httpx.AsyncClient = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            # Every request passes its own timeout; there is no default to fall back on.
            timeout=None, trust_env=False, follow_redirects=False)  # noqa: S113

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                      timeout: float) -> RawResponse:
        import httpx

        try:
            response = await self._client.request(method, url, headers=headers, content=body,
                                                  timeout=timeout)
        except httpx.TimeoutException as exc:
            raise TransportTimeout(f"no answer within {timeout:g}s") from exc
        except httpx.RemoteProtocolError as exc:
            # httpx says "Server disconnected without sending a response." for a
            # closed connection, and uses the same class for malformed HTTP.
            if "disconnected" in str(exc):
                raise TransportConnectError("the agent closed the connection") from exc
            raise TransportProtocolError(f"malformed HTTP answer: {exc}") from exc
        except httpx.NetworkError as exc:
            raise TransportConnectError(_os_reason(exc)) from exc
        except httpx.TransportError as exc:
            raise TransportProtocolError(f"malformed HTTP answer: {type(exc).__name__}") from exc
        return RawResponse(response.status_code, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class MockRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    timeout: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


MockHandler = Callable[[MockRequest], RawResponse | Awaitable[RawResponse]]


class MockTransport:
    """Answers from ``handler(request)`` (plain or async; it may raise a
    ``TransportError`` to play a dead agent). An async handler that takes
    longer than the call's timeout ends in ``TransportTimeout``, as a hung
    agent would. Every request is kept in ``requests``."""

    def __init__(self, handler: MockHandler):
        self.handler = handler
        self.requests: list[MockRequest] = []
        self.closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                      timeout: float) -> RawResponse:
        request = MockRequest(method, url, dict(headers), body, timeout)
        self.requests.append(request)
        answer = self.handler(request)
        if isinstance(answer, RawResponse):
            return answer
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError as exc:
            raise TransportTimeout(f"no answer within {timeout:g}s") from exc

    async def aclose(self) -> None:
        self.closed = True


# -- the client -----------------------------------------------------------------------------------
Sleep = Callable[[float], Awaitable[None]]


class AgentClient:
    """The contract's routes as methods, over one pooled ``Transport``.

    ``timeout`` bounds each attempt of a call to an instance route,
    ``node_timeout`` each node route (creating an instance installs files).
    Reads are retried ``retries`` times on network errors and 5xx, waiting
    ``backoff * 2**n`` seconds (at most ``max_backoff``, with jitter) between
    attempts; cancellation interrupts a call or its wait at once.
    """

    def __init__(self, transport: Transport | None = None, *, timeout: float = 5.0,
                 node_timeout: float = 30.0, retries: int = 2, backoff: float = 0.1,
                 max_backoff: float = 2.0, sleep: Sleep = asyncio.sleep, pool_size: int = 100):
        self.transport: Transport = transport if transport is not None else AiohttpTransport(pool_size)
        self.timeout = timeout
        self.node_timeout = node_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- low level: results, never raising for what the agent did -------------------------------
    async def _once(self, method: str, url: str, route: str, headers: Mapping[str, str],
                    body: bytes | None, timeout: float) -> AgentResult:
        try:
            raw = await self.transport.request(method, url, headers, body, timeout)
        except TransportError as exc:
            return AgentResult(route, None, None, exc.kind, str(exc) or exc.kind.value)
        return classify(route, raw.status, raw.body)

    async def get_result(self, ep: AgentEndpoint, route: str, *, timeout: float | None = None,
                         retries: int | None = None, auth: bool = True) -> AgentResult:
        """``GET`` ``route`` (e.g. ``"/status"``) as an ``AgentResult``, retried
        on network errors and 5xx. Raises only ``CancelledError``."""
        url = ep.url(route)
        headers: Mapping[str, str] = ep.headers if auth else {}
        attempts = 1 + max(0, self.retries if retries is None else retries)
        per_try = self.timeout if timeout is None else timeout
        for attempt in range(1, attempts + 1):
            result = await self._once("GET", url, route, headers, None, per_try)
            if attempt == attempts or not _retryable(result):
                break
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
            log.debug("GET %s: %s; retry %d in %.2fs", url, result.describe(), attempt, delay)
            await self._sleep(delay)
        if attempt > 1:
            result = AgentResult(result.route, result.status_code, result.body, result.failure,
                                 result.detail, attempt)
        return result

    async def get_agent_ready(self, ep: AgentEndpoint, *, timeout: float | None = None,
                              retries: int | None = None) -> AgentResult:
        """``GET /ready`` as a result; ``result.ready`` is the semantic readiness."""
        return await self.get_result(ep, "/ready", timeout=timeout, retries=retries)

    # -- instance routes ----------------------------------------------------------------------------
    async def health(self, ep: AgentEndpoint, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /health`` (no token): ``{"status": "ok"}``."""
        return _object(raise_for_result(await self.get_result(ep, "/health", timeout=timeout, auth=False)),
                       "/health")

    async def status(self, ep: AgentEndpoint, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /status``: the agent's full snapshot (docs/agent.md)."""
        return _object(raise_for_result(await self.get_result(ep, "/status", timeout=timeout)), "/status")

    async def _send(self, ep: AgentEndpoint, method: str, route: str, payload: Any = None,
                    timeout: float | None = None) -> AgentResult:
        """One attempt, never retried (for anything that is not a read)."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = dict(ep.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        return await self._once(method, ep.url(route), route, headers, body,
                                self.timeout if timeout is None else timeout)

    async def _post(self, ep: AgentEndpoint, route: str, payload: Any = None,
                    timeout: float | None = None) -> AgentResult:
        return await self._send(ep, "POST", route, payload, timeout)

    async def _power(self, ep: AgentEndpoint, action: str, timeout: float | None) -> dict[str, Any]:
        route = f"/{action}"
        return _object(raise_for_result(await self._post(ep, route, timeout=timeout)), route)

    async def start(self, ep: AgentEndpoint, *, timeout: float | None = None) -> dict[str, Any]:
        """``POST /start`` → the agent's 202 body. Never retried."""
        return await self._power(ep, "start", timeout)

    async def stop(self, ep: AgentEndpoint, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._power(ep, "stop", timeout)

    async def restart(self, ep: AgentEndpoint, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._power(ep, "restart", timeout)

    async def kill(self, ep: AgentEndpoint, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._power(ep, "kill", timeout)

    async def console_command(self, ep: AgentEndpoint, command: str, *,
                              timeout: float | None = None) -> dict[str, Any]:
        """``POST /console/command`` → ``{"accepted": true, "seq": N}``."""
        result = await self._post(ep, "/console/command", {"command": command}, timeout)
        return _object(raise_for_result(result), "/console/command")

    async def forward(self, ep: AgentEndpoint, method: str, route: str, payload: Any = None, *,
                      timeout: float | None = None) -> AgentResult:
        """One call whose HTTP status the API passes on (the backup routes):
        the agent's answer as a result, whatever its status. No answer at all
        (refused, timed out) still raises the enveloped 502/504. Only GETs are
        retried."""
        if method == "GET":
            result = await self.get_result(ep, route, timeout=timeout)
        else:
            result = await self._send(ep, method, route, payload, timeout)
        if result.failure in (FailureKind.UNREACHABLE, FailureKind.TIMEOUT, FailureKind.AUTH):
            raise_for_result(result)
        return result

    # -- node routes ---------------------------------------------------------------------------------
    async def create_instance(self, node_ep: AgentEndpoint, id: str, template: str, token_hash: str,
                              variables: Mapping[str, str] | None = None,
                              ports: Mapping[str, int] | None = None, *,
                              timeout: float | None = None) -> dict[str, Any]:
        """``POST /instances`` on a node agent → the ``instance`` object
        (``{"id", "template", "ports", "baseUrl"}``). Never retried."""
        payload: dict[str, Any] = {"id": id, "template": template, "tokenHash": token_hash}
        if variables:
            payload["variables"] = dict(variables)
        if ports:
            payload["ports"] = dict(ports)
        result = await self._post(node_ep, "/instances", payload,
                                  self.node_timeout if timeout is None else timeout)
        body = _object(raise_for_result(result), "/instances")
        instance = body.get("instance")
        if not isinstance(instance, dict):
            raise AgentBadResponse(details={"route": "/instances", "reason": 'no "instance" object'},
                                   agent_status=result.status_code)
        return instance

    async def delete_instance(self, node_ep: AgentEndpoint, id: str, *, missing_ok: bool = False,
                              timeout: float | None = None) -> None:
        """``DELETE /instances/<id>`` (kills the workload, removes its files).
        Never retried; with ``missing_ok`` an unknown id is not an error."""
        route = f"/instances/{quote(id, safe='')}"
        result = await self._once("DELETE", node_ep.url(route), route, node_ep.headers, None,
                                  self.node_timeout if timeout is None else timeout)
        if missing_ok and result.status_code == 404:
            return
        raise_for_result(result)

    async def list_instances(self, node_ep: AgentEndpoint, *,
                             timeout: float | None = None) -> dict[str, Any]:
        """``GET /instances`` → ``{"instances": [...], "broken": {id: reason}}``."""
        result = await self.get_result(node_ep, "/instances", timeout=timeout)
        return _object(raise_for_result(result), "/instances")


def _retryable(result: AgentResult) -> bool:
    if result.status_code is None:
        return True  # no answer: refused, reset, timed out, malformed
    return result.status_code >= 500 and result.failure is FailureKind.BAD_RESPONSE


def is_envelope(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _snippet(raw: bytes) -> str:
    return raw[:SNIPPET].decode("utf-8", "replace")


def classify(route: str, status: int, raw: bytes) -> AgentResult:
    """An HTTP answer as an ``AgentResult`` (see ``FailureKind``). A 4xx is
    the agent's answer whatever its body (a body that is not JSON is kept, cut
    short, in ``detail``); a 2xx must be JSON (or empty)."""
    body: Any = None
    not_json: str | None = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            not_json = _snippet(raw)
    if status == 401:
        return AgentResult(route, status, body, FailureKind.AUTH, "the agent answered 401")
    if status >= 500:
        if status == 503 and route == "/ready" and isinstance(body, dict) and body.get("ready") is False:
            return AgentResult(route, status, body, FailureKind.NONE)  # the contract's "not ready"
        return AgentResult(route, status, body, FailureKind.BAD_RESPONSE,
                           f"the agent answered HTTP {status}"
                           + (f" with a body that is not JSON: {not_json!r}" if not_json is not None else ""))
    if 400 <= status < 500:
        return AgentResult(route, status, body, FailureKind.NONE, not_json)
    if status < 200 or status >= 300:
        return AgentResult(route, status, body, FailureKind.BAD_RESPONSE, f"unexpected HTTP {status}")
    if not_json is not None:
        return AgentResult(route, status, None, FailureKind.BAD_RESPONSE,
                           f"HTTP {status} with a body that is not JSON: {not_json!r}")
    return AgentResult(route, status, body, FailureKind.NONE)


#: the error code of an agent's answer that came without an envelope of its own
GENERIC_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "too_large", 422: "unprocessable", 423: "locked",
                 429: "too_many_requests", 500: "agent_error", 501: "not_implemented", 502: "bad_gateway",
                 503: "unavailable", 504: "gateway_timeout", 507: "insufficient_storage"}


def raise_for_result(result: AgentResult) -> Any:
    """The body of a 2xx answer, or the enveloped ``AgentError`` for anything else."""
    route, status, body = result.route, result.status_code, result.body
    if result.failure is FailureKind.UNREACHABLE:
        raise AgentUnreachable(details={"route": route, "reason": result.detail})
    if result.failure is FailureKind.TIMEOUT:
        raise AgentTimeout(details={"route": route, "reason": result.detail})
    if result.failure is FailureKind.AUTH:
        raise AgentAuthFailed(details={"route": route, "agent": body if is_envelope(body) else None},
                              agent_status=status)
    if result.failure is FailureKind.BAD_RESPONSE or status is None or status >= 500:
        details: dict[str, Any] = {"route": route, "status": status, "reason": result.detail}
        if is_envelope(body):
            details["agent"] = body
        raise AgentBadResponse(details=details, agent_status=status)
    if 400 <= status < 500:
        if is_envelope(body):
            raise AgentRejected(body["error"], body.get("details"), status=status, agent_status=status)
        raise AgentRejected(GENERIC_CODES.get(status, "agent_rejected"),
                            {"route": route, "agentBody": body if body is not None else result.detail},
                            status=status, agent_status=status)
    return body


def _object(body: Any, route: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise AgentBadResponse(details={"route": route, "reason": "expected a JSON object"})
    return body


async def assert_agent_ready(client: AgentClient, ep: AgentEndpoint, *,
                             timeout: float | None = None) -> dict[str, Any]:
    """The ``/ready`` body when the agent is semantically ready, else
    ``503 agent_not_ready`` with the reason (and the failure kind)."""
    result = await client.get_agent_ready(ep, timeout=timeout)
    if result.ready:
        body: dict[str, Any] = result.body
        return body
    raise AgentNotReady(details={"reason": not_ready_reason(result), "failure": result.failure.value,
                                 "agentStatus": result.status_code}, agent_status=result.status_code)
