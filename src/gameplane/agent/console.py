"""The console: a bounded, sequence-numbered buffer of output lines, persisted
so that a restarted agent keeps numbering where it left off.

Readers never hold a queue of their own: each websocket keeps a cursor (the
last sequence number it sent) and reads from the shared ring. A reader that
falls behind the ring's oldest line is told about the gap and jumps ahead, so
a slow consumer costs no memory and never slows the workload or other readers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

MAX_LINE = 16 * 1024
_LOG_ROTATE_BYTES = 8 * 1024 * 1024


class ConsoleBuffer:
    """Lines numbered from 1 upwards; the newest ``capacity`` are kept.

    A list used as a ring (O(1) slicing for readers; a deque is O(n) to index
    in the middle). The log holds batches: a header ``@<first seq> <count>``
    and then that many lines, so writing costs one join per batch, not a
    formatted record per line; lines never contain a newline.
    """

    def __init__(self, capacity: int, log_path: Path | None = None):
        self._capacity = capacity
        self._ring: list[str] = []
        self._head = 0  # index in _ring of the oldest line once the ring is full
        self.last_seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self._log_path = log_path
        self._log = None
        if log_path is not None:
            self._recover(log_path)
            self._log = open(log_path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest line still held."""
        return self.last_seq - len(self._ring) + 1

    def extend(self, lines: list[str]) -> None:
        if not lines:
            return
        if self._log is not None:
            self._log.write(f"@{self.last_seq + 1} {len(lines)}\n")
            self._log.write("\n".join(lines))
            self._log.write("\n")
            self._log.flush()
            if self._log.tell() > _LOG_ROTATE_BYTES:
                self._rotate()
        self._append(lines)
        self._wake()

    def _append(self, lines: list[str]) -> None:
        self.last_seq += len(lines)
        cap = self._capacity
        if len(lines) >= cap:
            self._ring, self._head = lines[-cap:], 0
            return
        room = cap - len(self._ring)
        if room > 0:
            self._ring.extend(lines[:room])
            lines = lines[room:]
        for line in lines:  # full: overwrite the oldest, in place
            self._ring[self._head] = line
            self._head = (self._head + 1) % cap

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
        count = min(limit, self.last_seq - seq)
        start = (self._head + seq + 1 - first) % max(len(self._ring), 1)
        lines = self._ring[start:start + count]
        if len(lines) < count:
            lines += self._ring[:count - len(lines)]
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
        """Reload the newest lines and the sequence counter from the log, and
        cut a batch torn by a crash off the end so appending stays parseable."""
        for candidate in (path.with_suffix(".log.1"), path):
            try:
                data = candidate.read_bytes()
            except FileNotFoundError:
                continue
            good, whole = self._recover_bytes(data)
            if good < len(data) and candidate == path:
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    fh.seek(good)
                    fh.write(whole)  # the torn batch's whole lines, as a batch of their own

    def _recover_bytes(self, data: bytes) -> tuple[int, bytes]:
        """Parse batches; returns the offset after the last whole one, and the
        whole lines of a torn last batch re-encoded as a batch."""
        pos = good = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            header = data[pos:end].decode("ascii", "replace") if end >= 0 else ""
            first_text, _, count_text = header.removeprefix("@").partition(" ")
            if not header.startswith("@") or not first_text.isdigit() or not count_text.isdigit():
                break
            first, count = int(first_text), int(count_text)
            pos = end + 1
            batch = []
            for _ in range(count):
                end = data.find(b"\n", pos)
                if end < 0:
                    break
                batch.append(data[pos:end].decode("utf-8", "replace"))
                pos = end + 1
            if first != self.last_seq + 1:
                # A gap in the log (lost write): numbering stays monotonic, old lines go.
                self._ring, self._head = [], 0
                self.last_seq = max(first - 1, self.last_seq)
            self._append(batch)
            if len(batch) < count:  # torn by a crash mid-write
                if not batch:
                    return good, b""
                return good, f"@{first} {len(batch)}\n".encode() + "\n".join(batch).encode() + b"\n"
            good = pos
        return good, b""


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
        cut = data.rfind(b"\n")
        if cut < 0:
            self._rest = data
            if len(data) > MAX_LINE:
                self.flush()
        else:
            self._rest = data[cut + 1:]
            lines = self._clean(data[:cut])
            if lines:
                self._emit(lines)
        if self._rest:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._rest:
            rest, self._rest = self._rest, b""
            lines = self._clean(rest)
            if lines:
                self._emit(lines)

    def _clean(self, block: bytes) -> list[str]:
        """Lines of ``block`` (complete lines, without the last newline). The
        common case, plain UTF-8 text, costs a decode and a split for the
        whole block; prompts, NULs and overlong lines take the slow path."""
        text = block.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r", "")
        lines = text.split("\n")
        if self._prompt or "\x00" in text or (len(text) > MAX_LINE and any(len(x) > MAX_LINE for x in lines)):
            return self._slow(lines)
        return lines

    def _slow(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        prompt = self._prompt
        for raw in lines:
            if raw and not raw.strip("\x00"):
                continue  # only NUL padding (Teeworlds' econ ends lines with "\n\0\0")
            line = raw.replace("\x00", "")
            if prompt:
                stripped = line
                while stripped.startswith(prompt):
                    stripped = stripped[len(prompt):]
                if not stripped and line and not line.replace(prompt, "").strip():
                    continue  # a bare prompt
                line = stripped
            for start in range(0, max(len(line), 1), MAX_LINE):
                out.append(line[start:start + MAX_LINE])
        return out
