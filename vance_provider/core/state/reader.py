"""The file object that a reader wrapping another one shares: its own position, seeks passed on,
read-only, closed with the file it wraps. A subclass sees each read's bytes in :meth:`_read`.

    class Counting(WrappedReader):
        def _read(self, pos: int, data: bytes, size: int | None) -> bytes:
            self.seen += len(data)  # may raise, before the bytes are handed over
            return data
"""

from __future__ import annotations

from typing import Any, Self


class WrappedReader:
    """A read-only, seekable file object over ``fh`` that keeps the position of what it handed out."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._pos = fh.tell() if hasattr(fh, "tell") else 0

    def _read(self, pos: int, data: bytes, size: int | None) -> bytes:
        """What a read of ``size`` bytes at ``pos`` hands out, given the ``data`` the file gave."""
        return data

    def _took(self, data: bytes) -> int:
        """Move the position past ``data``, just read; returns where it was read."""
        pos = self._pos
        self._pos = pos + len(data)
        return pos

    def read(self, size: int | None = -1) -> bytes:
        data = self._fh.read(size)
        return self._read(self._took(data), data, size)

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._fh.seek(offset, whence)
        self._pos = self._fh.tell() if pos is None else pos  # some file objects return None
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return bool(getattr(self._fh, "closed", False))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["WrappedReader"]
