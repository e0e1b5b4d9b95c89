"""Whatever an agent answers, the backup routes' bodies have one documented
shape: checked against the schema (strict pydantic models) for every route
and for errors."""

from __future__ import annotations

from typing import Any

import pytest

from gameplane.agents import proxy
from gameplane.backups import shapes

GOOD = {"id": "b1", "name": "nightly", "createdAt": "2026-11-26T08:00:00Z", "sizeBytes": 12,
        "sha256": "ab" * 32, "status": "completed", "locked": False, "engine": "archive"}


@pytest.mark.parametrize("raw", [
    GOOD,
    {**GOOD, "extra": "dropped", "status": "weird", "locked": "yes", "sizeBytes": -3},
    {"id": 7},
    {},
])
def test_one_backup_always_has_the_documented_shape(raw: dict[str, Any]) -> None:
    out = shapes.backup_one({"backup": raw})
    shapes.BackupOne.model_validate(out)
    assert out["backup"]["status"] in ("pending", "running", "completed", "failed")


def test_an_unknown_status_is_failed_and_bad_fields_are_nulled() -> None:
    out = shapes.backup({**GOOD, "status": "exploded", "sizeBytes": "12", "locked": 1})
    assert out["status"] == "failed" and out["sizeBytes"] is None and out["locked"] is False


@pytest.mark.parametrize("body", [{"backups": [GOOD, "junk", {"id": "b2"}]},
                                  {"backups": None}, [], None, "x"])
def test_lists_keep_only_objects(body: Any) -> None:
    out = shapes.backup_list(body)
    shapes.BackupList.model_validate(out)


@pytest.mark.parametrize("body", [{"restore": {"backupId": "b1", "status": "running"}}, {}, None])
def test_restore_answers_name_the_backup(body: Any) -> None:
    out = shapes.restore(body, "b1")
    shapes.RestoreAnswer.model_validate(out)
    assert out["restore"]["backupId"] == "b1"


@pytest.mark.parametrize(("status", "body", "code"), [
    (409, {"error": "busy", "details": {"operation": "restore"}}, "busy"),
    (507, {"error": "insufficient_storage", "details": {"neededBytes": 5}}, "insufficient_storage"),
    (404, None, "not_found"),
    (500, "<html>", "agent_error"),
    (418, {"message": "teapot"}, "agent_error"),
])
def test_every_error_is_an_envelope(status: int, body: Any, code: str) -> None:
    out = proxy.envelope(status, body, "raw text")
    shapes.Envelope.model_validate(out)
    assert out["error"] == code
