"""The documented shapes of the file routes (DESIGN.md section 5), rebuilt
field by field from whatever the agent answered, as the backup routes do
(``backups.shapes``): unknown fields dropped, an entry of an unknown type
left out, a size that is not a non-negative integer ``null``."""

from __future__ import annotations

from typing import Any, Literal

from gameplane.backups.shapes import Strict, size, text


class Entry(Strict):
    name: str
    type: Literal["file", "dir"]
    sizeBytes: int | None
    modifiedAt: str | None


class Listing(Strict):
    entries: list[Entry]


class Uploaded(Strict):
    path: str
    sizeBytes: int | None


class UploadAnswer(Strict):
    file: Uploaded


def listing(body: Any) -> dict[str, Any]:
    items = body.get("entries") if isinstance(body, dict) else None
    entries = [Entry(name=item["name"], type=item["type"], sizeBytes=size(item.get("sizeBytes")),
                     modifiedAt=text(item.get("modifiedAt"))).model_dump()
               for item in items or []
               if isinstance(item, dict) and isinstance(item.get("name"), str)
               and item.get("type") in ("file", "dir")]
    return {"entries": entries}


def uploaded(body: Any, path: str) -> dict[str, Any]:
    raw = body.get("file") if isinstance(body, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    return {"file": Uploaded(path=text(raw.get("path")) or path, sizeBytes=size(raw.get("sizeBytes"))
                             ).model_dump()}
