"""fsspec storage: list sources, stream reads, atomic verified writes, safe output names."""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from .errors import InvalidInputError, TruncatedDownloadError, UnreadableInputError

CHUNK = 1 << 20  # bounded buffer for streaming (1 MiB)
# Listed from folders and globs; unsupported kinds (gif, bmp, ...) are listed too, so the
# batch reports them as failed with a reason instead of leaving them silently behind.
MEDIA_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".mp4",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".m4v",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
}


@dataclass(frozen=True)
class SourceFile:
    url: str
    size: int
    fingerprint: str  # etag/checksum when the store has one, else size + mtime
    relative: str  # path below the source prefix, used to name the output


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (list, tuple)) else proto


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    proto = _protocol(fs)
    return path if proto in ("file", "local") else f"{proto}://{path}"


def _fingerprint(info: dict[str, Any]) -> str:
    tag = info.get("ETag") or info.get("etag") or info.get("md5") or info.get("checksum")
    if tag:
        return f"{info.get('size')}:{str(tag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
    return f"{info.get('size')}:{mtime}"


def list_sources(
    source: str | Iterable[str],
    extensions: set[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[SourceFile]:
    """Expand a URL, a list of URLs, a glob or a prefix into files (sorted, de-duplicated)."""
    exts = extensions or MEDIA_EXTENSIONS
    urls = [source] if isinstance(source, str) else list(source)
    found: dict[str, SourceFile] = {}
    for url in urls:
        fs, path = url_to_fs(url, **(storage_options or {}))
        if any(ch in path for ch in "*?["):
            base = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
            matches = {p: fs.info(p) for p in fs.glob(path)}
        elif fs.isdir(path):
            base = path.rstrip("/")
            matches = fs.find(path, detail=True)
        else:
            if not fs.exists(path):
                raise UnreadableInputError(
                    "the source does not exist", source=url, hint="check the URL and the storage credentials"
                )
            base = path.rsplit("/", 1)[0]
            matches = {path: {**fs.info(path), "explicit": True}}
        for p, info in sorted(matches.items()):
            if info.get("type") == "directory":
                continue
            name = PurePosixPath(p).name
            listed = name.startswith((".", "_")) or PurePosixPath(p).suffix.lower() not in exts
            if listed and not info.get("explicit"):
                continue  # hidden files, manifests, partial downloads, other types
            rel = p[len(base) :].lstrip("/") if p.startswith(base) else name
            u = full_url(fs, p)
            found[u] = SourceFile(u, int(info.get("size") or 0), _fingerprint(info), rel)
    return list(found.values())


_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_name(relative: str) -> str:
    """A safe relative output path: no traversal, no hidden or odd characters, NFC unicode."""
    parts = []
    for part in PurePosixPath(unicodedata.normalize("NFC", relative.replace("\\", "/"))).parts:
        if part in ("", ".", "..", "/"):
            continue
        clean = _UNSAFE.sub("_", part).strip("._") or "file"
        parts.append(clean[:200])
    return "/".join(parts) or "file"


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name.lstrip("/")


def read_head(url: str, n: int = 64, storage_options: dict[str, Any] | None = None) -> bytes:
    with fsspec.open(url, "rb", **(storage_options or {})) as fh:
        return fh.read(n)


def read_tail(url: str, size: int, n: int = 16, storage_options: dict[str, Any] | None = None) -> bytes:
    with fsspec.open(url, "rb", **(storage_options or {})) as fh:
        fh.seek(max(0, size - n))
        return fh.read(n)


async def iter_file(
    url: str, storage_options: dict[str, Any] | None = None, chunk: int = CHUNK
) -> AsyncIterator[bytes]:
    """Stream a file from any fsspec URL in bounded chunks (blocking reads run in a thread)."""
    import asyncio

    fh = await asyncio.to_thread(lambda: fsspec.open(url, "rb", **(storage_options or {})).open())
    try:
        while True:
            data = await asyncio.to_thread(fh.read, chunk)
            if not data:
                return
            yield data
    finally:
        fh.close()


class AtomicWriter:
    """Write to a hidden temporary name beside the target; publish only when complete.

    ``commit(expected_size)`` checks the byte count, then renames (an atomic
    ``os.replace`` on local disk, a server-side move on object stores). On any
    error, ``abort()`` removes the partial file, so no half-written output is
    ever visible under its final name.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, self.path = url_to_fs(url, **(storage_options or {}))
        parent, name = self.path.rsplit("/", 1) if "/" in self.path else ("", self.path)
        self.tmp_path = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:8]}" if parent else f".{name}.partial"
        self.written = 0
        self._fh: Any = None

    def open(self) -> AtomicWriter:
        parent = self.path.rsplit("/", 1)[0]
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self._fh = self.fs.open(self.tmp_path, "wb")
        return self

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self.written += len(data)

    def commit(self, expected_size: int | None = None, final_url: str | None = None) -> str:
        self._fh.close()
        self._fh = None
        if expected_size is not None and self.written != expected_size:
            self.abort()
            raise TruncatedDownloadError(
                f"download of {self.url} ended at {self.written} of {expected_size} bytes"
            )
        target = self.path if final_url is None else url_to_fs(final_url)[1]
        if _protocol(self.fs) in ("file", "local"):
            os.replace(self.tmp_path, target)
        else:
            self.fs.mv(self.tmp_path, target)
        return final_url or self.url

    def abort(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except Exception:
                pass
            self._fh = None
        try:
            self.fs.rm(self.tmp_path)
        except (FileNotFoundError, OSError):
            pass


def write_bytes_atomic(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    w = AtomicWriter(url, storage_options).open()
    try:
        w.write(data)
        w.commit(len(data))
    except BaseException:
        w.abort()
        raise


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = url_to_fs(url, **(storage_options or {}))
    return bool(fs.exists(path))


def check_writable(prefix: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail early, before any credit is spent, if the destination cannot be written."""
    probe = join(prefix, f".vance-write-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes_atomic(probe, b"ok", storage_options)
        fs, path = url_to_fs(probe, **(storage_options or {}))
        fs.rm(path)
    except Exception as exc:
        raise InvalidInputError(
            f"the destination is not writable ({type(exc).__name__})",
            source=prefix,
            hint="check the path, its permissions and the storage credentials",
        ) from None
