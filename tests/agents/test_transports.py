"""The real transports (aiohttp, the default, and httpx) against real
sockets on loopback: each way a peer can fail maps to the same error."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gameplane.agents.client import (
    AgentBadResponse,
    AgentClient,
    AgentEndpoint,
    AgentTimeout,
    AgentUnreachable,
    AiohttpTransport,
    FailureKind,
    HttpxTransport,
    Transport,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[AgentClient]:
    transport: Transport = AiohttpTransport() if request.param == "aiohttp" else HttpxTransport()
    async with AgentClient(transport, timeout=0.3, retries=0) as c:
        yield c


async def serve(handler: Handler) -> tuple[asyncio.Server, AgentEndpoint]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, AgentEndpoint(f"http://127.0.0.1:{port}/i/x", "tok")


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_a_json_answer_over_a_kept_alive_connection(client: AgentClient) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = b'{"ready": true}'
        while True:
            try:
                head = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            assert b"authorization: bearer tok" in head.lower()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    server, ep = await serve(handler)
    async with server:
        for _ in range(3):
            result = await client.get_agent_ready(ep)
            assert result.ready and result.failure is FailureKind.NONE
    assert connections == 1


async def test_nothing_listening_is_agent_unreachable(client: AgentClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AgentUnreachable) as caught:
        await client.status(AgentEndpoint(f"http://127.0.0.1:{port}", "tok"))
    assert caught.value.details["reason"] == "connection refused"


async def test_a_peer_that_accepts_and_never_answers_is_agent_timeout(client: AgentClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server, ep = await serve(handler)
    async with server:
        started = time.monotonic()
        with pytest.raises(AgentTimeout):
            await client.status(ep)
        assert time.monotonic() - started < 1.5
        result = await client.get_agent_ready(ep)
        assert result.failure is FailureKind.TIMEOUT and not result.ready


async def test_a_listen_backlog_never_accepted_is_agent_timeout(client: AgentClient) -> None:
    """Like a SIGSTOPped agent: the kernel completes the handshake, nobody reads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        port = s.getsockname()[1]
        result = await client.get_agent_ready(AgentEndpoint(f"http://127.0.0.1:{port}", "tok"))
    assert result.failure is FailureKind.TIMEOUT


async def test_a_peer_that_closes_without_answering_is_agent_unreachable(client: AgentClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    server, ep = await serve(handler)
    async with server:
        with pytest.raises(AgentUnreachable):
            await client.status(ep)


async def test_garbage_instead_of_http_is_agent_bad_response(client: AgentClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    server, ep = await serve(handler)
    async with server:
        with pytest.raises(AgentBadResponse):
            await client.status(ep)


async def test_a_5xx_text_answer_is_agent_bad_response(client: AgentClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad")
        await writer.drain()
        writer.close()

    server, ep = await serve(handler)
    async with server:
        with pytest.raises(AgentBadResponse) as caught:
            await client.status(ep)
    assert caught.value.agent_status == 502
