"""Where console lines come from and where commands go.

* ``OutputReader`` drains the workload's stdout FIFO into a ``LineSplitter``.
* ``StdinChannel`` writes commands to the stdin FIFO (``console.type = stdin``).
* ``TcpChannel`` keeps a line-based remote console open (``console.type =
  tcp``, e.g. Teeworlds econ): it answers the password prompt, feeds what the
  server says into the same splitter, and reconnects while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from pathlib import Path

from gameplane.agent.console import LineSplitter
from gameplane.errors import Conflict, Unavailable

_READ_BYTES = 1 << 16
_DRAIN_BYTES = 1 << 20


class OutputReader:
    """Reads a FIFO without blocking the event loop; ``closed`` resolves at
    EOF, i.e. once every process holding the write end has exited."""

    def __init__(self, fifo: Path, splitter: LineSplitter):
        self._splitter = splitter
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._fd: int | None = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        # Drain what is there (bounded, so one chatty workload cannot starve the
        # others): one read per wake-up would leave the workload blocked on a
        # full pipe while the loop serves everything else.
        assert self._fd is not None
        chunks: list[bytes] = []
        size = 0
        eof = False
        while size < _DRAIN_BYTES:
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._splitter.feed(b"".join(chunks))
        if eof:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
            self._splitter.flush()
        if not self.closed.done():
            self.closed.set_result(None)


class Channel:
    """Sends a command line to the workload."""

    async def send(self, command: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the channel; safe to call twice."""


class NoChannel(Channel):
    async def send(self, command: str) -> None:
        raise Conflict("no_console", {"reason": "this template has no console"})


class StdinChannel(Channel):
    def __init__(self, fifo: Path):
        self._fifo = fifo
        self._fd: int | None = None

    async def send(self, command: str) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise Unavailable("console_unavailable", {"reason": str(exc)}) from exc
        data = (command + "\n").encode()
        try:
            written = os.write(self._fd, data)
        except BlockingIOError as exc:
            raise Unavailable("console_full",
                              {"reason": "the server is not reading its console input"}) from exc
        except OSError as exc:
            self.close()
            if exc.errno == errno.EPIPE:
                raise Conflict("not_running", {"reason": "the server has exited"}) from exc
            raise Unavailable("console_unavailable", {"reason": str(exc)}) from exc
        if written != len(data):
            # A pipe write of at most PIPE_BUF bytes is atomic; longer ones may split.
            raise Unavailable("console_full", {"reason": "command only partly written"})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TcpChannel(Channel):
    """A line-based TCP remote console behind an optional password prompt."""

    def __init__(self, port: int, splitter: LineSplitter, password: str | None,
                 password_prompt: str | None, host: str = "127.0.0.1"):
        self._addr = (host, port)
        self._splitter = splitter
        self._password = password
        self._prompt = password_prompt
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                reader, writer = await asyncio.open_connection(*self._addr)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            try:
                await self._session(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._ready.clear()
                self._writer = None
                _close_without_time_wait(writer)
            await asyncio.sleep(delay)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        authenticated = not (self._prompt and self._password is not None)
        if authenticated:
            self._writer = writer
            self._ready.set()
        seen = b""
        while chunk := await reader.read(_READ_BYTES):
            if not authenticated:
                seen += chunk
                assert self._prompt is not None and self._password is not None
                if self._prompt.encode() in seen:
                    writer.write(self._password.encode() + b"\n")
                    await writer.drain()
                    authenticated = True
                    self._writer = writer
                    self._ready.set()
                    seen = b""
                continue
            self._splitter.feed(chunk)

    async def send(self, command: str) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), 5)
        except TimeoutError as exc:
            raise Unavailable("console_unavailable",
                              {"reason": "remote console not connected"}) from exc
        writer = self._writer
        if writer is None:
            raise Unavailable("console_unavailable", {"reason": "remote console not connected"})
        writer.write(command.encode() + b"\n")
        await writer.drain()

    def close(self) -> None:
        self._task.cancel()
        if self._writer is not None:
            with contextlib.suppress(RuntimeError):
                _close_without_time_wait(self._writer)


def _close_without_time_wait(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0). A graceful close after the server
    hung up leaves the server's side of the connection in TIME_WAIT, and a
    server that does not set SO_REUSEADDR (Teeworlds' econ) then cannot bind
    its console port again for a minute: a restart would fail."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
