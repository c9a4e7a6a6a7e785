"""Structural checks of images and videos as their bytes go by, and the pass over an input that
checks and hashes it in the same read as its upload: each input byte is read from storage once
on the happy path.

    check = structure_for("jpg")       # JPEG markers, PNG chunks and CRCs, WebP RIFF, MP4 boxes
    for chunk in chunks:
        check.feed(chunk)              # Corrupt as soon as the bytes cannot be right
    check.finish()                     # Corrupt unless the structure ended (a truncated file)
    check.dimensions                   # (width, height) once the header has gone by (images)

The checks walk the file's structure, never decode pixels: a JPEG's markers up to its end of
image (the entropy-coded data is scanned for markers, C speed), a PNG's chunks and their CRCs up
to ``IEND``, a WebP's RIFF chunks up to the length its header gives, an MP4/MOV's top-level boxes
(a ``moov`` must be there, the last box must end with the file). Bytes after a JPEG's end of image
(a phone's Motion Photo carries a video there), after a PNG's ``IEND`` or a WebP's RIFF are not
the image's: they are hashed, never judged.

:class:`CheckedRead` is one pass: the SHA-256 and the structure of what it was fed.
:class:`CheckedReader` wraps a file an upload reads (httpx reads a multipart file part in chunks):
its last read checks the end of the structure *before* it hands the last bytes over, so a
truncated or corrupt input aborts its upload (the multipart body or the PUT is never complete,
so no job is created and nothing is charged) with an :class:`UnreadableInputError`.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from .api.errors import UnreadableInputError
from .media import PNG_SIGNATURE, sniff
from .state.reader import WrappedReader
from .state.storage import iter_file

#: ``(url, sha256)``: told once a pass has read a whole input and found it well formed.
Verified = Callable[[str, str], None]


class Corrupt(ValueError):
    """The bytes are not a well-formed file of their format (the reason is the message)."""


class Structure:
    """An incremental structural check: ``feed`` the bytes in order, then ``finish``."""

    fmt = ""

    def __init__(self) -> None:
        self.dimensions: tuple[int, int] | None = None
        self.ended = False  # the structure reached its end (later bytes are not judged)

    def feed(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Raise :class:`Corrupt` unless the structure is complete."""
        if not self.ended:
            raise Corrupt(self.incomplete())

    def incomplete(self) -> str:
        return "it ends before its end marker"


# --- JPEG ------------------------------------------------------------------------------------------
# In entropy-coded data, 0xFF is followed by 0x00 (a stuffed byte), a restart marker (D0-D7) or
# another 0xFF (fill): anything else is the next marker.
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class JpegStructure(Structure):
    """Markers from the start of image to the end of image: every segment's length, a frame
    header (its size) before the first scan, the scans' data walked to the next marker."""

    fmt = "jpg"

    def __init__(self) -> None:
        super().__init__()
        self._carry = b""  # the start of a marker cut by a chunk's end
        self._skip = 0  # segment bytes still to pass
        self._state = "start"  # start, marker, scan
        self._scans = 0

    def incomplete(self) -> str:
        return "it ends before its end-of-image marker" if self._scans else "it ends before its image data"

    def feed(self, data: bytes | memoryview) -> None:
        if self.ended or not data:
            return
        buf = self._carry + bytes(data) if self._carry else data
        self._carry = b""
        i, n = 0, len(buf)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
                continue
            if self._state == "scan":
                m = _SCAN_MARKER.search(buf, i)
                if m is None:
                    self._carry = b"\xff" if buf[n - 1] == 0xFF else b""
                    return
                i = m.start()
                self._state = "marker"
                continue
            if n - i < 2:
                self._carry = bytes(buf[i:])
                return
            if buf[i] != 0xFF:
                raise Corrupt("a segment is not followed by a marker")
            mark = buf[i + 1]
            if self._state == "start":
                if mark != 0xD8:
                    raise Corrupt("no start-of-image marker")
                self._state = "marker"
                i += 2
                continue
            if mark == 0xFF:  # fill byte
                i += 1
                continue
            if mark == 0xD9:
                if not self._scans:
                    raise Corrupt("it ends before its image data")
                self.ended = True
                return
            if 0xD0 <= mark <= 0xD7 or mark == 0x01:  # restart markers, TEM: no length
                i += 2
                continue
            if mark in (0x00, 0xD8):
                raise Corrupt(f"an unexpected marker 0xFF{mark:02X}")
            if n - i < (9 if mark in _SOF else 4):
                self._carry = bytes(buf[i:])
                return
            length = (buf[i + 2] << 8) | buf[i + 3]
            if length < 2:
                raise Corrupt(f"a segment 0xFF{mark:02X} with a length of {length}")
            if mark in _SOF:
                height, width = (buf[i + 5] << 8) | buf[i + 6], (buf[i + 7] << 8) | buf[i + 8]
                if length < 8 or not width or not height:
                    raise Corrupt("a frame header without a size")
                if self.dimensions is None:
                    self.dimensions = (width, height)
            elif mark == 0xDA:
                if self.dimensions is None:
                    raise Corrupt("image data before its frame header")
                self._scans += 1
                self._state = "scan"  # after the scan header (skipped next)
            self._skip = length - 2
            i += 4


# --- chunked formats: PNG, WebP, MP4/MOV -------------------------------------------------------------
class _Chunked(Structure):
    """A walk of ``header, payload`` records: ``_header(bytes)`` sees each header of ``_need``
    bytes and returns the length of the payload that follows (``None``: no payload, another
    header follows); ``_payload(view)`` sees the payload, ``_payload_end()`` its end."""

    def __init__(self, first_need: int) -> None:
        super().__init__()
        self._need = first_need
        self._buf = bytearray()
        self._left = 0  # payload bytes still to come
        self.pos = 0  # bytes of the stream walked (up to the end of the structure)

    def _limit(self) -> int | None:
        """How many bytes of the stream the structure spans, once known."""
        return None

    def feed(self, data: bytes | memoryview) -> None:
        if self.ended or not data:
            return
        view = memoryview(data)
        base, i = self.pos, 0

        def end_of_data() -> int:
            limit = self._limit()
            return len(view) if limit is None else min(len(view), max(0, limit - base))

        n = end_of_data()
        while i < n and not self.ended:
            if self._left:
                take = min(self._left, n - i)
                self._payload(view[i : i + take])
                i += take
                self._left -= take
                if not self._left:
                    self._payload_end()
                continue
            take = min(self._need - len(self._buf), n - i)
            self._buf += view[i : i + take]
            i += take
            if len(self._buf) < self._need:
                break
            header = bytes(self._buf)
            self._buf.clear()
            self.pos = base + i
            length = self._header(header)
            if length is not None:
                self._left = length
                if not length and not self.ended:
                    self._payload_end()
            n = end_of_data()
        self.pos = base + i
        limit = self._limit()
        if limit is not None and self.pos >= limit and not self.ended:
            self._at_limit()

    def _header(self, header: bytes) -> int | None:
        raise NotImplementedError

    def _payload(self, view: memoryview) -> None:
        pass

    def _payload_end(self) -> None:
        pass

    def _at_limit(self) -> None:
        pass


class PngStructure(_Chunked):
    """The signature, ``IHDR`` first (the size), every chunk's CRC, image data, then ``IEND``."""

    fmt = "png"

    def __init__(self) -> None:
        super().__init__(len(PNG_SIGNATURE))
        self._signed = False
        self._kind = b""
        self._crc = 0
        self._ihdr = bytearray()
        self._idat = False
        self._in_crc = False

    def incomplete(self) -> str:
        return "it ends before its IEND chunk" if self._idat else "it ends before its image data"

    def _header(self, header: bytes) -> int | None:
        if not self._signed:
            if header != PNG_SIGNATURE:
                raise Corrupt("no PNG signature")
            self._signed, self._need = True, 8
            return None
        if self._in_crc:  # the 4 bytes after a chunk's data
            self._in_crc, self._need = False, 8
            if struct.unpack(">I", header)[0] != self._crc:
                raise Corrupt(f"the CRC of its {self._kind.decode('latin-1')} chunk does not match")
            self._chunk_done()
            return None
        length, kind = struct.unpack(">I4s", header)
        if length > 0x7FFFFFFF:
            raise Corrupt("a chunk longer than PNG allows")
        if self.dimensions is None and kind != b"IHDR":
            raise Corrupt("the first chunk is not IHDR")
        self._kind, self._crc = kind, zlib.crc32(kind)
        return length

    def _payload(self, view: memoryview) -> None:
        self._crc = zlib.crc32(view, self._crc)
        if self._kind == b"IHDR" and len(self._ihdr) < 13:
            self._ihdr += view[: 13 - len(self._ihdr)]

    def _payload_end(self) -> None:
        self._in_crc, self._need = True, 4

    def _chunk_done(self) -> None:
        if self._kind == b"IHDR" and self.dimensions is None:
            if len(self._ihdr) != 13:
                raise Corrupt("an IHDR chunk of the wrong length")
            width, height = struct.unpack(">II", self._ihdr[:8])
            if not width or not height:
                raise Corrupt("an IHDR chunk without a size")
            self.dimensions = (width, height)
        elif self._kind == b"IDAT":
            self._idat = True
        elif self._kind == b"IEND":
            if not self._idat:
                raise Corrupt("no image data before IEND")
            self.ended = True


class WebpStructure(_Chunked):
    """The RIFF header, then chunks up to the length it gives; the first one tells the size."""

    fmt = "webp"

    def __init__(self) -> None:
        super().__init__(12)
        self._total: int | None = None
        self._first = bytearray()
        self._kind = b""
        self._chunks = 0

    def incomplete(self) -> str:
        return f"it ends at byte {self.pos} of the {self._total} its RIFF header gives"

    def _limit(self) -> int | None:
        return self._total

    def _header(self, header: bytes) -> int | None:
        if self._total is None:
            if header[:4] != b"RIFF" or header[8:12] != b"WEBP":
                raise Corrupt("no RIFF/WEBP header")
            size = int.from_bytes(header[4:8], "little")
            if size < 4 + 8 + 10:
                raise Corrupt("a RIFF length too small for an image")
            self._total, self._need = size + 8, 8
            return None
        kind, size = header[:4], int.from_bytes(header[4:8], "little")
        padded = size + (size & 1)
        assert self._total is not None
        if self.pos + padded > self._total:
            raise Corrupt(f"a {kind.decode('latin-1')} chunk runs past the end of the RIFF data")
        self._chunks += 1
        self._kind = kind
        return padded

    def _payload(self, view: memoryview) -> None:
        if self._chunks == 1 and len(self._first) < 10:
            self._first += view[: 10 - len(self._first)]

    def _payload_end(self) -> None:
        if self._chunks == 1 and self.dimensions is None:
            self.dimensions = _webp_size(self._kind, bytes(self._first))

    def _at_limit(self) -> None:
        if self._left or self._buf or self.dimensions is None:
            raise Corrupt("its last chunk is cut short")
        self.ended = True


def _webp_size(kind: bytes, first: bytes) -> tuple[int, int]:
    if kind == b"VP8X" and len(first) >= 10:
        return int.from_bytes(first[4:7], "little") + 1, int.from_bytes(first[7:10], "little") + 1
    if kind == b"VP8 " and len(first) >= 10 and first[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(first[6:8], "little") & 0x3FFF, int.from_bytes(first[8:10], "little") & 0x3FFF
    if kind == b"VP8L" and len(first) >= 5 and first[0] == 0x2F:
        bits = int.from_bytes(first[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise Corrupt(f"its first chunk ({kind.decode('latin-1')}) does not give the image's size")


class IsoBmffStructure(_Chunked):
    """MP4/MOV top-level boxes: each box's length within the file, a ``moov`` (the index a player
    needs: a recording cut off before it was written has none), the last box ending with the file."""

    fmt = "mp4"

    def __init__(self) -> None:
        super().__init__(8)
        self._large = False
        self._moov = False

    def _header(self, header: bytes) -> int | None:
        if self._large:
            self._large, self._need = False, 8
            size = struct.unpack(">Q", header)[0]
            if size < 16:
                raise Corrupt("a box with a bad length")
            return size - 16
        size, kind = struct.unpack(">I4s", header)
        self._moov = self._moov or kind == b"moov"
        if size == 1:
            self._large, self._need = True, 8
            return None
        if size == 0:
            self.ended = True  # the rest of the file is this box
            return None
        if size < 8:
            raise Corrupt("a box with a bad length")
        return size - 8

    def finish(self) -> None:
        if self._left or self._buf or self._large:
            raise Corrupt("its last box is cut short")
        if not self._moov:
            raise Corrupt("it has no moov box (a recording that was not finished?)")


def structure_for(fmt: str | None) -> Structure | None:
    """A fresh check for files of ``fmt`` (as :func:`~.media.sniff` names it); ``None`` for the
    formats not checked here (their service judges them)."""
    kind = {"jpg": JpegStructure, "png": PngStructure, "webp": WebpStructure}.get(fmt or "")
    if kind is not None:
        return kind()
    return IsoBmffStructure() if fmt in ("mp4", "mov") else None


def corrupt_error(url: str, fmt: str, exc: Corrupt) -> UnreadableInputError:
    return UnreadableInputError(
        f"the {fmt.upper()} file is truncated or corrupt ({exc})",
        source=url,
        hint="export or copy it again; nothing was charged for it",
    )


# --- one pass over an input ------------------------------------------------------------------------
class CheckedRead:
    """The SHA-256 and the structure of the bytes fed, in order, from the file's start. The format
    is ``fmt``, else sniffed from the first bytes."""

    def __init__(self, url: str, fmt: str | None = None) -> None:
        self.url = url
        self.fmt = fmt
        self.size = 0
        self._hash = hashlib.sha256()
        self._check = structure_for(fmt) if fmt else None

    @property
    def dimensions(self) -> tuple[int, int] | None:
        return self._check.dimensions if self._check else None

    def feed(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self.size == 0 and self.fmt is None:
            self.fmt = sniff(bytes(data[:64]))
            self._check = structure_for(self.fmt)
        self._hash.update(data)
        self.size += len(data)
        if self._check is not None:
            try:
                self._check.feed(data)
            except Corrupt as exc:
                raise corrupt_error(self.url, self.fmt or "", exc) from None

    def finish(self) -> str:
        """The SHA-256 (hex) of everything fed, once the structure is found complete."""
        if self._check is not None:
            try:
                self._check.finish()
            except Corrupt as exc:
                raise corrupt_error(self.url, self.fmt or "", exc) from None
        return self._hash.hexdigest()


def check_bytes(url: str, data: bytes, verified: Verified | None = None) -> bytes:
    """A whole small input, checked and hashed before it goes anywhere."""
    read = CheckedRead(url)
    read.feed(data)
    digest = read.finish()
    if verified is not None:
        verified(url, digest)
    return data


class CheckedReader(WrappedReader):
    """A file an upload reads, checked and hashed as it is read (see the module docstring).

    Bytes are judged while they are read in order from the start; a read that comes back short
    (the end of the file) first finishes the check and raises if the file is incomplete, so the
    last bytes never go. A seek back to the start (a new attempt) starts a new pass."""

    def __init__(self, fh: Any, url: str, verified: Verified | None = None) -> None:
        super().__init__(fh)
        self.url = url
        self._verified = verified
        self._pass = CheckedRead(url)
        self._done = False

    def _read(self, pos: int, data: bytes, size: int | None) -> bytes:
        if pos == self._pass.size and not self._done:  # in order
            self._pass.feed(data)
            if size is None or size < 0 or len(data) < size:  # the end of the file
                self._done = True
                digest = self._pass.finish()  # raises before these last bytes are handed over
                if self._verified is not None:
                    self._verified(self.url, digest)
        return bytes(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = super().seek(offset, whence)
        if pos == 0 and self._pass.size:  # read again from the start: a new pass
            self._pass, self._done = CheckedRead(self.url), False
        return pos

    def fileno(self) -> int:  # lets httpx take the length of a local file from fstat
        return int(self._fh.fileno())


async def checked_chunks(
    url: str, storage_options: dict[str, Any] | None = None, verified: Verified | None = None
) -> AsyncIterator[bytes]:
    """The chunks of a file for a streamed upload (a PUT), checked and hashed; one chunk is held
    back until the next is read, so the end is judged before the last chunk goes."""
    read = CheckedRead(url)
    held: bytes | None = None
    async for chunk in iter_file(url, storage_options):
        read.feed(chunk)
        if held is not None:
            yield held
        held = chunk
    digest = read.finish()
    if verified is not None:
        verified(url, digest)
    if held is not None:
        yield held


__all__ = [
    "CheckedRead",
    "CheckedReader",
    "Corrupt",
    "Structure",
    "check_bytes",
    "checked_chunks",
    "corrupt_error",
    "structure_for",
]
