"""AgentClient against a MockTransport: every mapping of an agent's answer
(or silence) to a result or an enveloped error, and the retry rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gameplane.agents.client import (
    AgentAuthFailed,
    AgentBadResponse,
    AgentClient,
    AgentEndpoint,
    AgentError,
    AgentNotReady,
    AgentRejected,
    AgentTimeout,
    AgentUnreachable,
    FailureKind,
    MockRequest,
    MockTransport,
    RawResponse,
    TransportConnectError,
    TransportProtocolError,
    TransportTimeout,
    assert_agent_ready,
    is_agent_ready_result,
)
from gameplane.errors import GameplaneError

EP = AgentEndpoint("http://agent.test:7000/i/alpha", "instance-token")
NODE = AgentEndpoint("http://agent.test:7000/", "node-token")


class Sleeps:
    """A stand-in for asyncio.sleep that records the backoff and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make(handler: Callable[[MockRequest], Any], **kw: Any) -> tuple[AgentClient, MockTransport, Sleeps]:
    transport = MockTransport(handler)
    sleeps = Sleeps()
    return AgentClient(transport, sleep=sleeps, **kw), transport, sleeps


def answer(status: int, body: Any = None, raw: bytes | None = None) -> Callable[[MockRequest], RawResponse]:
    response = RawResponse(status, raw) if raw is not None else RawResponse.json(status, body)
    return lambda request: response


def sequence(*answers: RawResponse | Exception) -> Callable[[MockRequest], RawResponse]:
    queue = list(answers)

    def handler(request: MockRequest) -> RawResponse:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler


# -- semantic readiness ---------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "body", "ready"), [
    (200, {"ready": True, "phase": "stopped"}, True),
    (200, {"ready": False}, False),
    (200, {"ready": "true"}, False),
    (200, {"ready": 1}, False),
    (200, {}, False),
    (200, [True], False),
    (200, None, False),
    (201, {"ready": True}, False),
    (503, {"ready": True}, False),
    (None, None, False),
])
def test_is_agent_ready_result_needs_200_and_ready_exactly_true(status: int | None, body: Any,
                                                                ready: bool) -> None:
    assert is_agent_ready_result(status, body) is ready


async def test_200_with_ready_false_is_not_ready() -> None:
    client, _, _ = make(answer(200, {"ready": False}))
    result = await client.get_agent_ready(EP)
    assert (result.ready, result.status_code, result.failure) == (False, 200, FailureKind.NONE)


async def test_200_not_json_is_not_ready_bad_response_and_not_retried() -> None:
    client, transport, _ = make(answer(200, raw=b"<html>ok</html>"))
    result = await client.get_agent_ready(EP)
    assert not result.ready and result.body is None
    assert result.failure is FailureKind.BAD_RESPONSE and "not JSON" in (result.detail or "")
    assert len(transport.requests) == 1


async def test_ready_503_of_the_contract_is_an_answer_not_a_failure_and_not_retried() -> None:
    client, transport, _ = make(answer(503, {"ready": False, "reason": "not installed"}))
    result = await client.get_agent_ready(EP)
    assert not result.ready and result.failure is FailureKind.NONE
    assert result.body["reason"] == "not installed"
    assert len(transport.requests) == 1


async def test_5xx_is_not_ready_and_the_get_is_retried_with_growing_backoff() -> None:
    client, transport, sleeps = make(answer(500, {"error": "internal_error", "details": None}),
                                     retries=3, backoff=0.1)
    result = await client.get_agent_ready(EP)
    assert not result.ready and result.failure is FailureKind.BAD_RESPONSE and result.status_code == 500
    assert len(transport.requests) == 4 and result.attempts == 4
    assert len(sleeps.delays) == 3
    # backoff * 2**n with jitter in [0.5, 1.0]
    for n, delay in enumerate(sleeps.delays):
        assert 0.05 * 2**n <= delay <= 0.1 * 2**n


async def test_a_5xx_then_ready_answer_is_ready_after_one_retry() -> None:
    client, transport, _ = make(sequence(RawResponse(502, b"Bad Gateway"),
                                         RawResponse.json(200, {"ready": True})))
    result = await client.get_agent_ready(EP)
    assert result.ready and result.attempts == 2 and len(transport.requests) == 2


async def test_network_errors_on_get_are_retried() -> None:
    client, transport, _ = make(sequence(TransportConnectError("connection refused"),
                                         RawResponse.json(200, {"status": "ok"})))
    assert await client.health(EP) == {"status": "ok"}
    assert len(transport.requests) == 2


async def test_backoff_is_capped() -> None:
    client, _, sleeps = make(answer(500, {}), retries=6, backoff=1.0, max_backoff=2.0)
    await client.get_result(EP, "/status")
    assert max(sleeps.delays) <= 2.0


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_4xx_is_never_retried(status: int) -> None:
    client, transport, sleeps = make(answer(status, {"error": "nope", "details": None}))
    with pytest.raises(AgentRejected):
        await client.status(EP)
    assert len(transport.requests) == 1 and sleeps.delays == []


@pytest.mark.parametrize("failure", [RawResponse(500, b"boom"), TransportConnectError("connection reset"),
                                     TransportTimeout("no answer within 5s")])
@pytest.mark.parametrize("action", ["start", "stop", "restart", "kill"])
async def test_posts_are_never_retried(action: str, failure: RawResponse | Exception) -> None:
    client, transport, sleeps = make(sequence(failure, RawResponse.json(202, {"accepted": True})))
    with pytest.raises(AgentError):
        await getattr(client, action)(EP)
    assert len(transport.requests) == 1 and sleeps.delays == []
    assert transport.requests[0].method == "POST" and transport.requests[0].url.endswith(f"/{action}")


# -- the error mapping --------------------------------------------------------------------------------
async def test_connection_refused_is_502_agent_unreachable() -> None:
    client, _, _ = make(sequence(TransportConnectError("connection refused")))
    with pytest.raises(AgentUnreachable) as caught:
        await client.status(EP)
    err = caught.value
    assert (err.status, err.code) == (502, "agent_unreachable")
    assert err.envelope() == {"error": "agent_unreachable",
                              "details": {"route": "/status", "reason": "connection refused"}}


async def test_timeout_is_504_agent_timeout() -> None:
    client, transport, _ = make(sequence(TransportTimeout("no answer within 5s")), retries=1)
    with pytest.raises(AgentTimeout) as caught:
        await client.status(EP)
    assert (caught.value.status, caught.value.code) == (504, "agent_timeout")
    assert len(transport.requests) == 2, "a timed-out GET is a network error: retried"


async def test_a_hung_agent_times_out_at_the_call_timeout() -> None:
    async def hang(request: MockRequest) -> RawResponse:
        await asyncio.sleep(10)
        raise AssertionError

    client, transport, _ = make(hang, timeout=0.05, retries=0)
    with pytest.raises(AgentTimeout):
        await client.start(EP)
    assert transport.requests[0].timeout == 0.05
    result = await client.get_agent_ready(EP)
    assert result.failure is FailureKind.TIMEOUT and not result.ready and not result.answered


async def test_malformed_http_is_agent_bad_response() -> None:
    client, _, _ = make(sequence(TransportProtocolError("malformed HTTP answer")), retries=0)
    with pytest.raises(AgentBadResponse):
        await client.status(EP)


@pytest.mark.parametrize(("status", "raw"), [
    (500, b'{"error": "internal_error", "details": null}'),
    (503, b'{"error": "console_full", "details": null}'),
    (502, b"<html>Bad Gateway</html>"),
    (200, b"not json"),
    (302, b""),
])
async def test_5xx_non_json_and_unexpected_answers_are_502_agent_bad_response(status: int,
                                                                             raw: bytes) -> None:
    client, _, _ = make(answer(status, raw=raw), retries=0)
    with pytest.raises(AgentBadResponse) as caught:
        await client.status(EP)
    err = caught.value
    assert (err.status, err.code, err.agent_status) == (502, "agent_bad_response", status)
    assert err.details["route"] == "/status"


async def test_a_5xx_envelope_is_kept_in_the_details() -> None:
    client, _, _ = make(answer(500, {"error": "internal_error", "details": None}), retries=0)
    with pytest.raises(AgentBadResponse) as caught:
        await client.status(EP)
    assert caught.value.details["agent"] == {"error": "internal_error", "details": None}


@pytest.mark.parametrize("call", ["status", "start", "list"])
async def test_401_is_502_agent_auth_failed_not_the_users_401(call: str) -> None:
    client, transport, _ = make(answer(401, {"error": "invalid_token", "details": {"reason": "x"}}))
    calls = {"status": lambda: client.status(EP), "start": lambda: client.start(EP),
             "list": lambda: client.list_instances(NODE)}
    with pytest.raises(AgentAuthFailed) as caught:
        await calls[call]()
    err = caught.value
    assert (err.status, err.code) == (502, "agent_auth_failed")
    assert err.details["agent"]["error"] == "invalid_token"
    assert len(transport.requests) == 1, "401 is a 4xx: never retried"


async def test_the_agents_4xx_envelope_keeps_status_code_and_details() -> None:
    envelope = {"error": "busy", "details": {"operation": "start"}}
    client, _, _ = make(answer(409, envelope))
    with pytest.raises(AgentRejected) as caught:
        await client.stop(EP)
    err = caught.value
    assert (err.status, err.code, err.details) == (409, "busy", {"operation": "start"})
    assert err.envelope() == envelope
    assert isinstance(err, GameplaneError)


@pytest.mark.parametrize(("status", "raw", "code", "agent_body"), [
    (404, b"<h1>Not Found</h1>", "not_found", "<h1>Not Found</h1>"),
    (422, b'{"message": "bad"}', "unprocessable", {"message": "bad"}),
    (418, b"", "agent_rejected", None),
])
async def test_an_agent_4xx_without_an_envelope_still_becomes_one(status: int, raw: bytes, code: str,
                                                                  agent_body: Any) -> None:
    client, _, _ = make(answer(status, raw=raw))
    with pytest.raises(AgentRejected) as caught:
        await client.console_command(EP, "say hi")
    err = caught.value
    assert (err.status, err.code) == (status, code)
    assert err.envelope() == {"error": code,
                              "details": {"route": "/console/command", "agentBody": agent_body}}


async def test_a_2xx_that_is_not_an_object_is_bad_response() -> None:
    client, _, _ = make(answer(200, [1, 2]))
    with pytest.raises(AgentBadResponse):
        await client.status(EP)


# -- routes and requests ------------------------------------------------------------------------------
async def test_requests_carry_the_bearer_token_but_health_does_not() -> None:
    client, transport, _ = make(answer(200, {"status": "ok"}))
    await client.health(EP)
    await client.status(EP)
    health, status = transport.requests
    assert health.url == "http://agent.test:7000/i/alpha/health" and "Authorization" not in health.headers
    assert status.headers["Authorization"] == "Bearer instance-token"


async def test_console_command_posts_json() -> None:
    client, transport, _ = make(answer(202, {"accepted": True, "seq": 7}))
    assert await client.console_command(EP, "say hello") == {"accepted": True, "seq": 7}
    request = transport.requests[0]
    assert request.json() == {"command": "say hello"}
    assert request.headers["Content-Type"] == "application/json"


async def test_node_routes() -> None:
    instance = {"id": "alpha", "template": "quitter", "ports": {}, "baseUrl": "/i/alpha"}

    def handler(request: MockRequest) -> RawResponse:
        if request.method == "POST":
            return RawResponse.json(201, {"instance": instance})
        if request.method == "DELETE":
            return RawResponse(204) if request.url.endswith("/alpha") else RawResponse.json(
                404, {"error": "not_found", "details": None})
        return RawResponse.json(200, {"instances": [instance], "broken": {}})

    client, transport, _ = make(handler)
    got = await client.create_instance(NODE, "alpha", "quitter", "sha256:" + "0" * 64,
                                       {"bind_address": "127.0.0.1"}, {"game": 30000})
    assert got == instance
    create = transport.requests[0]
    assert create.url == "http://agent.test:7000/instances"
    assert create.headers["Authorization"] == "Bearer node-token"
    assert create.json() == {"id": "alpha", "template": "quitter", "tokenHash": "sha256:" + "0" * 64,
                             "variables": {"bind_address": "127.0.0.1"}, "ports": {"game": 30000}}
    assert (await client.list_instances(NODE))["instances"] == [instance]
    assert await client.delete_instance(NODE, "alpha") is None
    assert transport.requests[-1].method == "DELETE"
    with pytest.raises(AgentRejected) as caught:
        await client.delete_instance(NODE, "gone")
    assert caught.value.status == 404
    await client.delete_instance(NODE, "gone", missing_ok=True)


async def test_create_instance_errors_are_forwarded() -> None:
    client, transport, _ = make(answer(404, {"error": "template_not_found", "details": {"template": "x"}}))
    with pytest.raises(AgentRejected) as caught:
        await client.create_instance(NODE, "alpha", "x", "token")
    assert caught.value.envelope() == {"error": "template_not_found", "details": {"template": "x"}}
    assert len(transport.requests) == 1


async def test_create_instance_without_the_instance_object_is_bad_response() -> None:
    client, _, _ = make(answer(201, {"ok": True}))
    with pytest.raises(AgentBadResponse):
        await client.create_instance(NODE, "alpha", "quitter", "token")


def test_endpoint_normalizes_and_hides_the_token() -> None:
    ep = AgentEndpoint("http://h:1/i/x/", "secret")
    assert ep.base_url == "http://h:1/i/x" and ep.url("/ready") == "http://h:1/i/x/ready"
    assert "secret" not in repr(ep)
    with pytest.raises(ValueError, match="http"):
        AgentEndpoint("h:1", "secret")


# -- readiness assertion -------------------------------------------------------------------------------
async def test_assert_agent_ready_returns_the_body_when_ready() -> None:
    client, _, _ = make(answer(200, {"ready": True, "phase": "stopped"}))
    assert (await assert_agent_ready(client, EP))["phase"] == "stopped"


@pytest.mark.parametrize(("handler", "reason", "failure"), [
    (answer(503, {"ready": False, "reason": "not installed"}), "not installed", "none"),
    (answer(200, {"ready": False}), 'the agent answered 200 without "ready": true', "none"),
    (answer(200, raw=b"yes"), "bad answer from the agent", "bad_response"),
    (sequence(TransportConnectError("connection refused")), "agent unreachable: connection refused",
     "unreachable"),
    (answer(401, {"error": "invalid_token", "details": None}), "refused the control plane's credentials",
     "auth"),
])
async def test_assert_agent_ready_raises_503_agent_not_ready_with_the_reason(
        handler: Callable[[MockRequest], RawResponse], reason: str, failure: str) -> None:
    client, _, _ = make(handler, retries=0)
    with pytest.raises(AgentNotReady) as caught:
        await assert_agent_ready(client, EP)
    err = caught.value
    assert (err.status, err.code) == (503, "agent_not_ready")
    assert reason in err.details["reason"] and err.details["failure"] == failure


# -- cancellation ----------------------------------------------------------------------------------------
async def test_cancellation_during_backoff_stops_at_once() -> None:
    transport = MockTransport(answer(500, {}))
    client = AgentClient(transport, retries=5, backoff=30.0, max_backoff=30.0)  # real sleeps
    task = asyncio.create_task(client.status(EP))
    while not transport.requests:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert len(transport.requests) == 1


async def test_cancellation_during_a_request_propagates() -> None:
    started = asyncio.Event()

    async def hang(request: MockRequest) -> RawResponse:
        started.set()
        await asyncio.sleep(30)
        raise AssertionError

    client = AgentClient(MockTransport(hang), timeout=60)
    task = asyncio.create_task(client.get_agent_ready(EP))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_client_closes_its_transport() -> None:
    transport = MockTransport(answer(200, {}))
    async with AgentClient(transport):
        pass
    assert transport.closed
