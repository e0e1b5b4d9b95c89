"""Console websocket frames (DESIGN.md section 3), shared by the agent and the API's
proxy so both spell them the same way. Output frames are formatted by hand: one
``json.dumps`` of the line instead of a dict's, which is most of a frame's cost."""

from __future__ import annotations

import json
from typing import Any


def output(seq: int, line: str) -> str:
    return f'{{"type":"output","seq":{seq},"line":{json.dumps(line, ensure_ascii=False)}}}'


def batch(first: int, lines: list[str]) -> str:
    return f'{{"type":"output","seq":{first},"lines":{json.dumps(lines, ensure_ascii=False)}}}'


def merge_batches(texts: list[str | None]) -> str:
    """Consecutive batch frames (as :func:`batch` writes them, each with at least one
    line) as one, by splicing their arrays: no parse, one copy."""
    head, *rest = texts
    assert head is not None
    if not rest:
        return head
    return head[:-2] + "".join(", " + t[t.index("[") + 1:-2] for t in rest if t is not None) + "]}"


def error(code: str, details: Any = None) -> str:
    return json.dumps({"type": "error", "error": code, "details": details})
