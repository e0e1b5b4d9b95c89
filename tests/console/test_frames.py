"""Frame formats shared by the agent and the proxy."""

from __future__ import annotations

import json

from gameplane.console import frames


def test_merged_batches_are_one_batch_of_all_their_lines() -> None:
    tricky = ['quote " comma ", "', "back\\slash\\", "ünïcode ✓", "]}", "[x]"]
    parts = [frames.batch(10, tricky[:2]), frames.batch(12, tricky[2:3]), frames.batch(13, tricky[3:])]
    merged = json.loads(frames.merge_batches(list(parts)))
    assert merged == {"type": "output", "seq": 10, "lines": tricky}
    assert frames.merge_batches([parts[0]]) == parts[0]


def test_output_and_error_frames() -> None:
    assert json.loads(frames.output(7, 'a "b"')) == {"type": "output", "seq": 7, "line": 'a "b"'}
    assert json.loads(frames.error("x", {"y": 1})) == {"type": "error", "error": "x", "details": {"y": 1}}
