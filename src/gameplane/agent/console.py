"""The console: a bounded, sequence-numbered buffer of output lines, persisted
so that a restarted agent keeps numbering where it left off.

Readers never hold a queue of their own: each websocket keeps a cursor (the
last sequence number it sent) and reads from the shared ring. A reader that
falls behind the ring's oldest line is told about the gap and jumps ahead, so
a slow consumer costs no memory and never slows the workload or other readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

MAX_LINE = 16 * 1024
_LOG_ROTATE_BYTES = 8 * 1024 * 1024


class ConsoleBuffer:
    """Lines numbered from 1 upwards; the newest ``capacity`` are kept."""

    def __init__(self, capacity: int, log_path: Path | None = None):
        self._lines: deque[str] = deque(maxlen=capacity)
        self._capacity = capacity
        self.last_seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self._log_path = log_path
        self._log = None
        if log_path is not None:
            self._recover(log_path)
            self._log = open(log_path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest line still held."""
        return self.last_seq - len(self._lines) + 1

    def extend(self, lines: list[str]) -> None:
        if not lines:
            return
        self._lines.extend(lines)
        if self._log is not None:
            start = self.last_seq + 1
            self._log.write("".join(f"{start + i}\t{line}\n" for i, line in enumerate(lines)))
            self._log.flush()
            if self._log.tell() > _LOG_ROTATE_BYTES:
                self._rotate()
        self.last_seq += len(lines)
        self._wake()

    def read_after(self, seq: int, limit: int = 1000) -> tuple[tuple[int, int] | None, int, list[str]]:
        """Lines after ``seq``: ``(gap, first_seq_returned, lines)``.

        ``gap`` is ``(from, to)`` when lines ``from..to`` were evicted before
        the caller read them; the lines returned then start right after it.
        """
        seq = max(0, min(seq, self.last_seq))
        gap = None
        first = self.first_seq
        if seq + 1 < first:
            gap = (seq + 1, first - 1)
            seq = first - 1
        offset = seq + 1 - first
        count = min(limit, self.last_seq - seq)
        lines = [self._lines[offset + i] for i in range(count)]
        return gap, seq + 1, lines

    async def wait_beyond(self, seq: int) -> None:
        """Return once a line newer than ``seq`` exists (or ``poke`` is called)."""
        if self.last_seq > seq:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def poke(self) -> None:
        """Wake every reader, e.g. because the workload's phase changed."""
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _rotate(self) -> None:
        assert self._log is not None and self._log_path is not None
        self._log.close()
        os.replace(self._log_path, self._log_path.with_suffix(".log.1"))
        self._log = open(self._log_path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def _recover(self, path: Path) -> None:
        """Reload the newest lines and the sequence counter from the log."""
        for candidate in (path.with_suffix(".log.1"), path):
            with contextlib.suppress(FileNotFoundError), \
                    open(candidate, encoding="utf-8", errors="replace") as fh:
                for raw in fh:
                    seq_text, sep, line = raw.rstrip("\n").partition("\t")
                    if not sep or not seq_text.isdigit():
                        continue
                    seq = int(seq_text)
                    if seq != self.last_seq + 1:
                        # A torn or foreign log: keep numbering monotonic, drop the held lines.
                        self._lines.clear()
                    self._lines.append(line)
                    self.last_seq = max(seq, self.last_seq + 1)


class LineSplitter:
    """Turns a byte stream into lines: UTF-8 with replacement, ``\\r`` dropped,
    overlong lines cut, a prompt prefix stripped, and a trailing partial line
    flushed after a short pause so a prompt-less question still shows."""

    def __init__(self, emit: Callable[[list[str]], None], prompt: str | None = None,
                 partial_delay: float = 0.25):
        self._emit = emit
        self._prompt = prompt
        self._rest = b""
        self._delay = partial_delay
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, chunk: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        data = self._rest + chunk
        parts = data.split(b"\n")
        self._rest = parts.pop()
        if len(self._rest) > MAX_LINE:
            parts.append(self._rest)
            self._rest = b""
        lines = self._clean(parts)
        if lines:
            self._emit(lines)
        if self._rest:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._rest:
            rest, self._rest = self._rest, b""
            lines = self._clean([rest])
            if lines:
                self._emit(lines)

    def _clean(self, parts: list[bytes]) -> list[str]:
        out: list[str] = []
        prompt = self._prompt
        for part in parts:
            # NULs: Teeworlds' econ ends lines with "\n\0\0"; no console wants them.
            if part and not part.strip(b"\x00"):
                continue  # only NUL padding
            line = part.decode("utf-8", "replace").replace("\r", "").replace("\x00", "")
            if prompt:
                while line.startswith(prompt):
                    line = line[len(prompt):]
                if not line and part.strip(b"\x00\r ") == prompt.strip().encode():
                    continue
            for start in range(0, max(len(line), 1), MAX_LINE):
                out.append(line[start:start + MAX_LINE])
        return out
