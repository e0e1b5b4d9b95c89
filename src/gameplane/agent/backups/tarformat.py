"""Tar headers, written and read by the archive engine itself.

Writing: ustar headers, with a pax ``x`` header first when a name or link
target is too long or not ASCII, or a number does not fit its field: what
``tarfile``'s PAX format writes, and what any tar reads.

Reading: ustar and GNU headers, pax ``x`` headers (path, linkpath, size,
mtime) and GNU long names (``L``/``K``): what our own writer and GNU tar
write. Anything else (global pax headers, sparse files, multi-volume parts,
unknown types) is refused rather than guessed at, so what this parser sees
is what is extracted and checked.

``tarfile`` does both, but builds a ``TarInfo`` (and, when reading, copies
its buffer) per member: for a world of many small files that was most of a
restore's time.
"""

from __future__ import annotations

from dataclasses import dataclass

from gameplane.agent.backups import safety

BLOCK = 512
REG, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
_REGULAR = (b"0", b"\0", b"7")  # "7" (contiguous) is a regular file to every tar in use
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_POSIX_MAGIC = b"ustar\x0000"
_MAX_OCTAL_11 = 0o77777777777
_MAX_EXTENSION = 1 << 20  # a pax or GNU long-name header is a few names long


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: str) -> bytes:
    payload = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    # The length counts its own digits.
    n = len(payload) + 1
    while len(str(n)) + len(payload) != n:
        n += 1
    return str(n).encode() + payload


def _ustar(name: bytes, kind: bytes, size: int, mode: int, mtime: int, link: bytes) -> bytes:
    buf = bytearray(BLOCK)
    buf[0:len(name)] = name
    buf[100:108] = _octal(mode & 0o7777, 8)
    buf[108:116] = buf[116:124] = _octal(0, 8)
    buf[124:136] = _octal(size, 12)
    buf[136:148] = _octal(mtime, 12)
    buf[148:156] = b" " * 8
    buf[156:157] = kind
    buf[157:157 + len(link)] = link
    buf[257:265] = _POSIX_MAGIC
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _fits(text: str) -> bytes | None:
    """The field's bytes if ``text`` goes in a 100-byte ustar field as it is."""
    return raw if text.isascii() and len(raw := text.encode()) < 100 else None


def header(name: str, kind: bytes, size: int = 0, mode: int = 0o644, mtime: int = 0,
           link: str = "") -> bytes:
    """The header block(s) of one member; its data (padded with ``padding``) follows."""
    pax: list[bytes] = []
    raw_name, raw_link = _fits(name), _fits(link)
    if raw_name is None:
        pax.append(_pax_record("path", name))
    if raw_link is None:
        pax.append(_pax_record("linkpath", link))
    if size > _MAX_OCTAL_11:
        pax.append(_pax_record("size", str(size)))
    if not 0 <= mtime <= _MAX_OCTAL_11:
        pax.append(_pax_record("mtime", str(mtime)))
    own = _ustar(raw_name or b"@PaxHeader-name", kind, size if size <= _MAX_OCTAL_11 else 0, mode,
                 mtime if 0 <= mtime <= _MAX_OCTAL_11 else 0, raw_link or b"")
    if not pax:
        return own
    records = b"".join(pax)
    return (_ustar(b"././@PaxHeader", _PAX, len(records), 0o644, 0, b"") + records
            + padding(len(records)) + own)


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


END = bytes(2 * BLOCK)


@dataclass(frozen=True)
class Member:
    """One member as a header (with its extensions applied) says; its ``size``
    bytes of data and then ``padding(size)`` follow in the stream."""

    name: str
    kind: bytes  # REG, HARDLINK, SYMLINK, DIR, or a special kind (refused by the extractor)
    size: int
    mode: int
    mtime: float
    link: str


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256: 0x80 positive, 0xff negative
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise safety.refuse("", f"bad tar header: {what} field {field!r}") from None


def is_end(block: bytes) -> bool:
    return block.count(0) == BLOCK


def parse(block: bytes) -> tuple[bytes, str, int, int, float, str]:
    """(type, name, size, mode, mtime, link) of one header block; checksum checked."""
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 256 + sum(block[156:])  # the field counts as 8 spaces
    # Some old tars summed signed bytes.
    if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in block[:148] + block[156:]):
        raise safety.refuse(_text(block[0:100]), "bad tar header checksum (not a tar archive, or damaged)")
    kind = block[156:157]
    name = _text(block[0:100])
    if block[257:265] == _POSIX_MAGIC and (prefix := _text(block[345:500])):
        name = f"{prefix}/{name}"
    size = _number(block[124:136], "size")
    if size < 0:
        raise safety.refuse(name, "negative size")
    return (kind, name, size, _number(block[100:108], "mode"), _number(block[136:148], "mtime"),
            _text(block[157:257]))


def pax_records(data: bytes, member: str) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        except ValueError:
            raise safety.refuse(member, "bad pax header") from None
        if length <= 0 or data[pos + length - 1:pos + length] != b"\n" or not _:
            raise safety.refuse(member, "bad pax header")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class Extensions:
    """What pax and GNU long-name headers say about the next member."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def takes(self, kind: bytes) -> bool:
        """Whether a header of ``kind`` is an extension (its data goes to ``add``)."""
        if kind == _PAX_GLOBAL:
            raise safety.refuse("", "global pax headers are not supported")
        return kind in (_PAX, _GNU_LONGNAME, _GNU_LONGLINK)

    @staticmethod
    def check_size(size: int) -> None:
        if size > _MAX_EXTENSION:
            raise safety.refuse("", f"a tar extension header of {size} bytes")

    def add(self, kind: bytes, data: bytes) -> None:
        if kind == _PAX:
            records = pax_records(data, self.fields.get("path", ""))
            if any(key.startswith("GNU.sparse") for key in records):
                raise safety.refuse(records.get("path", ""), "sparse file")
            self.fields.update(records)
        else:
            self.fields["path" if kind == _GNU_LONGNAME else "linkpath"] = _text(data)

    def apply(self, block: bytes) -> Member:
        """The member of a (non-extension) header, with the pending extensions; clears them."""
        kind, name, size, mode, mtime, link = parse(block)
        fields, self.fields = self.fields, {}
        name, link = fields.get("path", name), fields.get("linkpath", link)
        try:
            size = int(fields.get("size", size))
            when = float(fields.get("mtime", mtime))
        except ValueError:
            raise safety.refuse(name, "bad pax size or mtime") from None
        if size < 0:
            raise safety.refuse(name, "negative size")
        if kind in _REGULAR:
            kind = DIR if kind == b"\0" and name.endswith("/") else REG
        if kind in (HARDLINK, SYMLINK, DIR, CHAR, BLOCKDEV, FIFO):
            size = 0  # no data follows these, whatever the field says (as tar reads them)
        elif kind != REG:
            raise safety.refuse(name, f"tar member type {kind!r} is not supported")
        return Member(name, kind, size, mode, when, link)
