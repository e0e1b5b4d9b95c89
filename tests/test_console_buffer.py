"""ConsoleBuffer and LineSplitter without processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gameplane.agent.console import MAX_LINE, ConsoleBuffer, LineSplitter


def test_read_after_returns_lines_with_their_sequence_numbers() -> None:
    buf = ConsoleBuffer(100)
    buf.extend(["a", "b", "c"])
    assert buf.read_after(0) == (None, 1, ["a", "b", "c"])
    assert buf.read_after(2) == (None, 3, ["c"])
    assert buf.read_after(3) == (None, 4, [])
    assert buf.read_after(99) == (None, 4, []), "a cursor from the future is clamped"


def test_evicted_lines_are_reported_as_a_gap() -> None:
    buf = ConsoleBuffer(100)
    buf.extend([str(i) for i in range(1, 251)])
    gap, first, lines = buf.read_after(10, limit=5)
    assert gap == (11, 150) and first == 151 and lines == ["151", "152", "153", "154", "155"]
    assert buf.read_after(150)[0] is None


def test_numbering_and_lines_survive_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    buf = ConsoleBuffer(100, log)
    buf.extend(["one", "two\twith tab", ""])
    buf.close()
    again = ConsoleBuffer(100, log)
    assert again.last_seq == 3
    assert again.read_after(0) == (None, 1, ["one", "two\twith tab", ""])
    again.extend(["four"])
    assert again.read_after(3) == (None, 4, ["four"])


def test_the_log_rotates_and_recovery_reads_both_halves(tmp_path: Path, monkeypatch) -> None:
    import gameplane.agent.console as console

    monkeypatch.setattr(console, "_LOG_ROTATE_BYTES", 200)
    log = tmp_path / "console.log"
    buf = ConsoleBuffer(1000, log)
    for i in range(50):
        buf.extend([f"line {i}"])
    buf.close()
    assert log.with_suffix(".log.1").exists()
    again = ConsoleBuffer(1000, log)
    assert again.last_seq == 50
    gap, first, lines = again.read_after(0)
    assert lines[-1] == "line 49" and first + len(lines) - 1 == 50
    assert gap is None or gap[0] == 1


async def test_waiters_wake_on_new_lines_and_on_poke() -> None:
    buf = ConsoleBuffer(100)
    waiter = asyncio.create_task(buf.wait_beyond(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    buf.extend(["x"])
    await asyncio.wait_for(waiter, 1)
    poked = asyncio.create_task(buf.wait_beyond(1))
    await asyncio.sleep(0)
    buf.poke()
    await asyncio.wait_for(poked, 1)


async def test_splitter_joins_chunks_strips_prompts_and_flushes_partial_lines() -> None:
    got: list[str] = []
    splitter = LineSplitter(got.extend, prompt="> ", partial_delay=0.01)
    splitter.feed(b"hel")
    splitter.feed(b"lo\r\n> > 2: saved\n> \nplain\n")
    assert got == ["hello", "2: saved", "plain"]
    splitter.feed("caf\xe9 \xff".encode("latin-1"))
    await asyncio.sleep(0.05)
    assert got[-1] == "caf\ufffd \ufffd", "invalid UTF-8 is replaced, a pending partial line is flushed"


def test_splitter_cuts_overlong_lines() -> None:
    got: list[str] = []
    splitter = LineSplitter(got.extend)
    splitter.feed(b"y" * (MAX_LINE * 2 + 5) + b"\n")
    assert [len(x) for x in got] == [MAX_LINE, MAX_LINE, 5]


def test_a_log_torn_by_a_crash_keeps_every_whole_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    buf = ConsoleBuffer(100, log)
    buf.extend(["a", "b"])
    buf.close()
    with open(log, "a") as fh:
        fh.write("@3 3\nc\nd")  # the crash cut the batch in its third line
    again = ConsoleBuffer(100, log)
    assert again.read_after(0) == (None, 1, ["a", "b", "c"])
    again.extend(["next"])
    assert again.read_after(3) == (None, 4, ["next"]), "numbering continues after the torn batch"
    again.close()
    third = ConsoleBuffer(100, log)
    assert third.read_after(0) == (None, 1, ["a", "b", "c", "next"]), "the torn tail was cut, not kept"


def test_the_ring_wraps_and_reads_across_its_end() -> None:
    buf = ConsoleBuffer(5)
    for i in range(1, 13):
        buf.extend([str(i)])
    assert buf.first_seq == 8 and len(buf) == 5
    assert buf.read_after(7) == (None, 8, ["8", "9", "10", "11", "12"])
    assert buf.read_after(9, limit=2) == (None, 10, ["10", "11"])
    buf.extend([str(i) for i in range(13, 30)])
    assert buf.read_after(0, limit=3) == ((1, 24), 25, ["25", "26", "27"])
