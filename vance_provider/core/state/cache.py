"""A content-addressed result cache: never pay twice for the same pixels, across batches.

An entry is keyed by what determines a job's output: the SHA-256 of the input's bytes, the API,
the tool, a canonical fingerprint of its config and, where the service reports one ahead of the
job, the model version. It lives on any fsspec store and holds the result's bytes and a small
JSON record (job id, credits paid, when, content type, sizes, the result's SHA-256)::

    cache = ResultCache("s3://bucket/vance-cache/", storage_options)
    key = key_for_call(sha256_of(source), call)
    hit = cache.fetch(key, output)            # None on a miss (a bad entry is a miss, and removed)
    if hit is None:
        ...                                    # submit, poll, download and verify as today, then
        cache.store(key, final_output, job_id=job.id, credits=cost)

Layout under the cache's URL (``v1`` is the layout's version)::

    v1/objects/<k[:2]>/<k>/record.json        the record, written last (atomically)
    v1/objects/<k[:2]>/<k>/<12 hex>.<ext>     the result's bytes, never rewritten
    v1/hits/<k[:2]>/<k>/<ms>-<8 hex>-<credits>.hit   one small object per hit
    v1/ledger/<ms>-<8 hex>.json               hits folded by ``prune`` (their count and credits)

Every object is written whole (a local file under a hidden temporary name, then renamed; an
object-store upload appears only when complete) and never changed afterwards: the record names
its blob, so a record never points at a missing or partial blob, and concurrent writers of the
same key cannot corrupt it (the last record wins; the other blob is an orphan ``prune`` removes).
Two batches that miss the same key at the same moment may each pay once: nothing here locks.

The methods are blocking (fsspec); the async engine calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from fsspec.core import url_to_fs

from ..api.errors import ConfigurationError, InvalidConfigError, VanceError
from ..media import sniff
from ..secrets import redact, redact_url
from ..tools import ToolCall
from .storage import (
    CHUNK,
    PARTIAL_MARK,
    AtomicWriter,
    HashingReader,
    full_url,
    is_local,
    open_hashing,
    sha256_of,
    write_bytes_atomic,
)

log = logging.getLogger("vance_provider.cache")

LAYOUT = "v1"
RECORD_NAME = "record.json"
Verify = Literal["size", "full"]

# Extensions a destination may already carry (as downloads decide: media.py MEDIA_EXTS).
OUTPUT_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "mp4", "mov", "gif"}
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOB = re.compile(r"^[0-9a-f]{12}\.[a-z0-9]{1,5}$")


class CacheError(VanceError):
    """The result cache cannot do what was asked (the batch can still run without it)."""


class CacheUnusableError(CacheError, ConfigurationError):
    """The result cache the batch was given cannot be used (a file where its folder should be, a
    read-only mount, no permission). Raised before anything is spent, unless the cache is optional."""


class CacheCorruptError(CacheError):
    """A cache entry did not match its record (truncated, altered or gone). It has been removed;
    treat it as a miss."""


# --- keys --------------------------------------------------------------------------------------------
def canonical_config(config: Mapping[str, Any] | str | None) -> str:
    """One spelling of a config: JSON with sorted keys and no spaces. A string that is JSON is
    re-spelled the same way; any other string is taken as it is."""
    if config is None:
        return "null"
    value: Any = config
    if isinstance(config, str):
        try:
            value = json.loads(config)
        except ValueError:
            return config
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class CacheKey:
    """What determines a result. ``digest`` (also ``str(key)``) names the entry."""

    input_sha256: str
    api: str
    tool: str
    config: str  # canonical_config(...)
    model_version: str | None = None

    @property
    def digest(self) -> str:
        parts = [LAYOUT, self.input_sha256, self.api, self.tool, self.config, self.model_version]
        return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()

    def __str__(self) -> str:
        return self.digest


def cache_key(
    sha256_hex: str,
    api: str,
    tool: str,
    config_fingerprint: Mapping[str, Any] | str | None,
    model_version: str | None = None,
) -> CacheKey:
    """The key of a result: the input's SHA-256 (hex), the API, the vendor's tool, its config
    (a mapping or a JSON string, spelled canonically) and the model version when it is known
    before the job runs (neither VanceAI API reports one today: leave it ``None``)."""
    digest = sha256_hex.lower() if isinstance(sha256_hex, str) else ""
    if not _HEX64.match(digest):
        raise ValueError(f"sha256_hex must be 64 hex digits, got {sha256_hex!r}")
    if not api or not tool:
        raise ValueError("cache_key needs an api and a tool")
    return CacheKey(digest, str(api), str(tool), canonical_config(config_fingerprint), model_version)


def key_for_call(sha256_hex: str, call: ToolCall, model_version: str | None = None) -> CacheKey:
    """The key of ``call`` (a resolved :class:`ToolCall`) on an input: its API, the vendor's tool
    and ``call.fingerprint()`` (web jconfig, Open API tool and config, output format)."""
    return cache_key(sha256_hex, call.api, call.vendor_tool, call.fingerprint(), model_version)


def _digest(key: CacheKey | str) -> str:
    d = key.digest if isinstance(key, CacheKey) else str(key).lower()
    if not _HEX64.match(d):
        raise ValueError(f"not a cache key: {key!r}")
    return d


# --- ages --------------------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_age(text: str) -> float:
    """Seconds in an age such as ``90d``, ``12h``, ``30m``, ``45s``, ``2w`` or ``1d12h``."""
    cleaned = str(text).strip().lower().replace(" ", "")
    parts = _AGE_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise InvalidConfigError(
            f"{text!r} is not an age",
            hint="give a number and a unit (s, m, h, d, w): 90d, 12h, 30m; or combine them: 1d12h",
        )
    return float(sum(float(n) * _UNITS[u] for n, u in parts))


# --- records -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    """A verified entry: ``blob`` is the URL of the result's bytes."""

    key: str
    blob: str
    size: int
    sha256: str
    ext: str
    content_type: str
    credits: float
    job_id: str | None
    created_at: float
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class CacheHit:
    """A result served from the cache: written to ``output``, paying nothing."""

    entry: CacheEntry
    output: str
    server_side: bool  # copied by the store itself (nothing went through this machine)

    @property
    def credits_saved(self) -> float:
        return self.entry.credits


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int  # results and records
    hits: int
    credits_saved: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PruneResult:
    entries: int  # entries removed
    bytes: int  # bytes removed (entries, orphan blobs, stale partial files)
    hits_folded: int = 0  # hit markers folded into the ledger (their credits still count)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_record(raw: bytes, digest: str) -> dict[str, Any]:
    """The record if it is whole and consistent, else ``ValueError``."""
    rec = json.loads(raw)
    if not isinstance(rec, dict) or rec.get("version") != 1 or rec.get("key") != digest:
        raise ValueError("not a record of this key")
    if not isinstance(rec.get("blob"), str) or not _BLOB.match(rec["blob"]):
        raise ValueError("bad blob name")
    size: Any = rec.get("size")
    credits: Any = rec.get("credits")
    at: Any = rec.get("created_at")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError("bad size")
    if not isinstance(rec.get("sha256"), str) or not _HEX64.match(rec["sha256"]):
        raise ValueError("bad sha256")
    for value in (credits, at):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("bad number")
    if credits < 0:
        raise ValueError("negative credits")
    return rec


def _etag(info: Mapping[str, Any]) -> str | None:
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("md5")
    return str(tag).strip('"') if tag else None


def _mtime(info: Mapping[str, Any]) -> float | None:
    for name in ("mtime", "LastModified", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _has_output_ext(url: str) -> bool:
    name = _name(url)
    return "." in name and name.rsplit(".", 1)[1].lower() in OUTPUT_EXTENSIONS


# --- the cache ---------------------------------------------------------------------------------------
class ResultCache:
    """A result cache on the fsspec URL ``url`` (a folder or prefix).

    ``verify`` is how much :meth:`lookup` checks before it trusts an entry: ``"size"`` (default)
    compares the blob's size, and its ETag where the store reports one (S3, GCS), with the
    record; ``"full"`` also streams the blob and compares its SHA-256. A copy that goes through
    this machine (local caches, another store than the destination's) always checks the SHA-256
    of what it copies before the output is published.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, *, verify: Verify = "size"
    ) -> None:
        if verify not in ("size", "full"):
            raise InvalidConfigError(f"verify must be 'size' or 'full', got {verify!r}")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.verify: Verify = verify
        self.fs, path = url_to_fs(url, **self.storage_options)
        self.root = f"{path.rstrip('/')}/{LAYOUT}"

    def __repr__(self) -> str:  # never the storage options: they may hold credentials
        return f"ResultCache({redact_url(self.url)!r})"

    def check_usable(self) -> None:
        """Write and remove a probe under the cache's folder: a :class:`CacheUnusableError` if the
        cache cannot be written (a regular file at its URL, a read-only mount, no permission)."""
        base = self.root.rsplit("/", 1)[0]
        hint = (
            "give a folder you can write (--cache URL, or VANCE_CACHE), or make the cache optional "
            "(cache_optional=True, --cache-optional) to run without it when it cannot be used"
        )
        try:
            is_file = self.fs.isfile(base)
        except Exception:
            is_file = False
        if is_file:
            raise CacheUnusableError(
                f"the result cache {redact_url(self.url)} is a file, not a folder", hint=hint
            )
        probe = f"{self.root}/.vance-probe-{uuid.uuid4().hex[:8]}"
        try:
            write_bytes_atomic(self._url(probe), b"ok", self.storage_options)
            self.fs.rm(probe)
        except Exception as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise CacheUnusableError(
                f"the result cache {redact_url(self.url)} cannot be written ({reason})", hint=hint
            ) from None

    # --- paths
    def _entry_dir(self, digest: str) -> str:
        return f"{self.root}/objects/{digest[:2]}/{digest}"

    def _hits_dir(self, digest: str) -> str:
        return f"{self.root}/hits/{digest[:2]}/{digest}"

    def _url(self, path: str) -> str:
        return full_url(self.fs, path)

    def _invalidate(self, path: str) -> None:
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(path)

    # --- lookup
    def lookup(self, key: CacheKey | str, *, verify: Verify | None = None) -> CacheEntry | None:
        """The entry of ``key`` if there is a sound one, else ``None``.

        A missing record is a miss. A record that cannot be read, or whose blob is missing or does
        not match it (size, ETag, or SHA-256 with ``verify="full"``), is removed and is a miss.
        Other storage errors (permissions, network) propagate.
        """
        digest = _digest(key)
        where = self._entry_dir(digest)
        record_path = f"{where}/{RECORD_NAME}"
        self._invalidate(where)
        try:
            raw = self.fs.cat_file(record_path)
        except FileNotFoundError:
            return None
        try:
            rec = _parse_record(raw, digest)
        except ValueError as exc:
            self._discard(digest, raw, None, f"unreadable record ({exc})")
            return None
        blob = f"{where}/{rec['blob']}"
        try:
            info = self.fs.info(blob)
        except FileNotFoundError:
            self._discard(digest, raw, blob, "its result is missing")
            return None
        if int(info.get("size") or 0) != rec["size"]:
            self._discard(digest, raw, blob, f"the result has {info.get('size')} bytes, not {rec['size']}")
            return None
        tag = _etag(info)
        if tag and rec.get("etag") and tag != rec["etag"]:
            self._discard(digest, raw, blob, "the result was rewritten (its ETag changed)")
            return None
        if (verify or self.verify) == "full":
            h = hashlib.sha256()
            with self.fs.open(blob, "rb") as fh:
                while data := fh.read(CHUNK):
                    h.update(data)
            if h.hexdigest() != rec["sha256"]:
                self._discard(digest, raw, blob, "the result's SHA-256 does not match its record")
                return None
        return self._entry(digest, rec)

    def _entry(self, digest: str, rec: dict[str, Any]) -> CacheEntry:
        return CacheEntry(
            key=digest,
            blob=self._url(f"{self._entry_dir(digest)}/{rec['blob']}"),
            size=rec["size"],
            sha256=rec["sha256"],
            ext=str(rec.get("ext") or rec["blob"].rsplit(".", 1)[1]),
            content_type=str(rec.get("content_type") or "application/octet-stream"),
            credits=float(rec["credits"]),
            job_id=rec.get("job_id"),
            created_at=float(rec["created_at"]),
            record=rec,
        )

    def _discard(self, digest: str, seen: bytes | dict[str, Any], blob: str | None, why: str) -> None:
        """Remove a bad entry: its record, unless another writer has replaced it since it was
        ``seen`` (its bytes, or the parsed record), and its blob."""
        log.warning("cache entry %s is not sound (%s): removed, treated as a miss", digest[:16], why)
        record_path = f"{self._entry_dir(digest)}/{RECORD_NAME}"
        try:
            current = self.fs.cat_file(record_path)
            if isinstance(seen, bytes):
                same = current == seen
            else:
                try:
                    same = json.loads(current) == seen
                except ValueError:
                    same = False
            if same:
                self.fs.rm(record_path)
        except (FileNotFoundError, OSError):
            pass
        if blob:
            try:
                self.fs.rm(blob)
            except (FileNotFoundError, OSError):
                pass

    def remove(self, key: CacheKey | str) -> None:
        """Remove an entry (record first, then its blobs); a missing one is no error."""
        where = self._entry_dir(_digest(key))
        self._rm([f"{where}/{RECORD_NAME}"])
        try:
            self._rm(list(self.fs.find(where)))
        except FileNotFoundError:
            pass
        self._rmdirs([where])

    # --- copy out
    def copy_to(
        self,
        entry: CacheEntry,
        dest: str,
        storage_options: dict[str, Any] | None = None,
        *,
        now: float | None = None,
    ) -> CacheHit:
        """Write the entry's result to ``dest`` (with the entry's extension when ``dest`` has
        none, as downloads do) and count the hit. Returns where it went.

        The store copies it itself when the cache and ``dest`` are on the same object store with
        the same options; otherwise it is streamed through an atomic writer and its SHA-256
        checked before the output is published. A mismatch (or a blob gone meanwhile) removes the
        entry and raises :class:`CacheCorruptError`; nothing is written to ``dest``.
        """
        final = dest if _has_output_ext(dest) else f"{dest}.{entry.ext}"
        dfs, dpath = url_to_fs(final, **(storage_options or {}))
        _, blob = url_to_fs(entry.blob, **self.storage_options)
        server_side = not is_local(self.fs) and dfs == self.fs
        if server_side:
            try:
                self.fs.copy(blob, dpath)
            except FileNotFoundError:
                self._raise_if_gone(entry, blob)
                raise  # the destination's side
        else:
            self._stream_copy(entry, blob, final, storage_options)
        self._record_hit(entry, now)
        return CacheHit(entry, final, server_side)

    def _stream_copy(
        self, entry: CacheEntry, blob: str, final: str, storage_options: dict[str, Any] | None
    ) -> None:
        h = hashlib.sha256()
        writer = AtomicWriter(final, storage_options)
        try:
            with self.fs.open(blob, "rb") as fh:
                writer.open()
                while data := fh.read(CHUNK):
                    h.update(data)
                    writer.write(data)
            sound = writer.written == entry.size and h.hexdigest() == entry.sha256
            if sound:
                writer.commit(entry.size)
        except FileNotFoundError:
            writer.abort()
            self._raise_if_gone(entry, blob)
            raise  # the destination's side
        except BaseException:
            writer.abort()
            raise
        if not sound:
            writer.abort()
            self._discard(entry.key, entry.record, blob, "the result does not match its record")
            raise CacheCorruptError(f"cache entry {entry.key[:16]} does not match its record")

    def _raise_if_gone(self, entry: CacheEntry, blob: str) -> None:
        """A copy found no file: if it is the entry's result that is gone (pruned meanwhile,
        deleted by hand), the entry is removed and the copy a miss."""
        self._invalidate(blob.rsplit("/", 1)[0])
        if not self.fs.exists(blob):
            self._discard(entry.key, entry.record, None, "its result is gone")
            raise CacheCorruptError(f"cache entry {entry.key[:16]} lost its result") from None

    def _record_hit(self, entry: CacheEntry, now: float | None) -> None:
        at = time.time() if now is None else now
        name = f"{int(at * 1000)}-{uuid.uuid4().hex[:8]}-{float(entry.credits)!r}.hit"
        body = json.dumps({"key": entry.key, "credits": entry.credits, "at": at}).encode()
        try:
            write_bytes_atomic(self._url(f"{self._hits_dir(entry.key)}/{name}"), body, self.storage_options)
        except Exception as exc:  # the hit is served; only the statistics miss it
            log.warning("could not count a cache hit (%s)", type(exc).__name__)

    def fetch(
        self,
        key: CacheKey | str,
        dest: str,
        storage_options: dict[str, Any] | None = None,
        *,
        verify: Verify | None = None,
        now: float | None = None,
    ) -> CacheHit | None:
        """Look ``key`` up and copy its result to ``dest``: the one call the engine makes before
        submitting an item. ``None`` is a miss (a bad entry found on the way is removed)."""
        entry = self.lookup(key, verify=verify)
        if entry is None:
            return None
        try:
            return self.copy_to(entry, dest, storage_options, now=now)
        except CacheCorruptError:
            return None

    # --- store
    def store(
        self,
        key: CacheKey | str,
        result_url: str,
        *,
        job_id: str | None,
        credits: float,
        storage_options: dict[str, Any] | None = None,
        input_size: int | None = None,
        result_sha256: str | None = None,
        now: float | None = None,
    ) -> CacheEntry:
        """Keep a verified result (``result_url``, read with ``storage_options``) under ``key``.

        A sound entry already there is kept and returned (another batch stored it first). The
        blob is written first under a fresh name, the record last, each atomically. The bytes are
        streamed and hashed on the way; with ``result_sha256`` given and the result on the
        cache's own object store, the store copies it itself. No token is ever in a record.
        """
        if isinstance(credits, bool) or not isinstance(credits, (int, float)) or not credits >= 0:
            raise ValueError(f"credits must be a number of 0 or more, got {credits!r}")
        if not math.isfinite(credits):
            raise ValueError(f"credits must be finite, got {credits!r}")
        digest = _digest(key)
        existing = self.lookup(digest)
        if existing is not None:
            return existing
        rfs, rpath = url_to_fs(result_url, **(storage_options or {}))
        where = self._entry_dir(digest)
        suffix = _name(rpath).rsplit(".", 1)[1].lower() if "." in _name(rpath) else ""
        ext = suffix if suffix in CONTENT_TYPES else ""
        if result_sha256 and not is_local(self.fs) and rfs == self.fs:
            size = int(rfs.info(rpath)["size"])
            ext = ext or sniff(rfs.cat_file(rpath, start=0, end=64)) or "bin"
            blob = f"{where}/{uuid.uuid4().hex[:12]}.{ext}"
            self.fs.copy(rpath, blob)
            sha = result_sha256.lower()
        else:
            sha, size, blob = self._stream_in(rfs, rpath, where, ext)
            if result_sha256 and result_sha256.lower() != sha:
                self._rm([blob])
                raise CacheError(
                    f"{result_url}: its SHA-256 is not the one given; nothing was cached",
                    hint="the result changed while it was being cached; it is cached after the next job",
                )
        if size <= 0:
            self._rm([blob])
            raise CacheError(f"{result_url} is empty; nothing was cached")
        self._invalidate(where)
        info = self.fs.info(blob)
        ext = blob.rsplit(".", 1)[1]
        rec: dict[str, Any] = {
            "version": 1,
            "key": digest,
            "blob": _name(blob),
            "size": size,
            "sha256": sha,
            "etag": _etag(info),
            "ext": ext,
            "content_type": CONTENT_TYPES.get(ext, "application/octet-stream"),
            "credits": float(credits),
            "job_id": job_id,
            "created_at": time.time() if now is None else float(now),
            "input_size": input_size,
        }
        if isinstance(key, CacheKey):
            rec.update(
                input_sha256=key.input_sha256,
                api=key.api,
                tool=key.tool,
                config=key.config,
                model_version=key.model_version,
            )
        body = redact(json.dumps(rec, sort_keys=True, ensure_ascii=False)).encode()
        write_bytes_atomic(self._url(f"{where}/{RECORD_NAME}"), body, self.storage_options)
        return self._entry(digest, json.loads(body))

    def _stream_in(self, rfs: Any, rpath: str, where: str, ext: str) -> tuple[str, int, str]:
        """Stream a result into a new blob: (sha256, size, blob path)."""
        h = hashlib.sha256()
        with rfs.open(rpath, "rb") as fh:
            head = fh.read(CHUNK)
            ext = ext or sniff(head[:64]) or "bin"
            blob = f"{where}/{uuid.uuid4().hex[:12]}.{ext}"
            writer = AtomicWriter(self._url(blob), self.storage_options)
            try:
                writer.open()
                data = head
                while data:
                    h.update(data)
                    writer.write(data)
                    data = fh.read(CHUNK)
                writer.commit(writer.written)
            except BaseException:
                writer.abort()
                raise
        return h.hexdigest(), writer.written, blob

    # --- housekeeping
    def _find(self, sub: str) -> dict[str, dict[str, Any]]:
        path = f"{self.root}/{sub}"
        self._invalidate(path)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        return {p: i for p, i in found.items() if i.get("type") != "directory"}

    def _hits(self) -> tuple[dict[str, tuple[str, float, float]], list[dict[str, Any]]]:
        """Live hit markers (path -> (key, at, credits)) and the ledgers' contents."""
        hits: dict[str, tuple[str, float, float]] = {}
        for path in self._find("hits"):
            name = _name(path)
            if name.startswith(".") or not name.endswith(".hit"):
                continue
            try:
                ms, _, credits = name[: -len(".hit")].split("-", 2)
                hits[path] = (path.rsplit("/", 2)[-2], int(ms) / 1000, float(credits))
            except ValueError:
                continue
        ledgers = []
        paths = [p for p in self._find("ledger") if not _name(p).startswith(".")]
        for path, raw in self._cat(paths).items():
            try:
                data = json.loads(raw)
                ledgers.append({**data, "hits": int(data["hits"]), "credits": float(data["credits"])})
            except (ValueError, KeyError, TypeError):
                log.warning("cache ledger %s is unreadable: ignored", _name(path))
        return hits, ledgers

    def _cat(self, paths: list[str]) -> dict[str, bytes]:
        """Many small files at once (concurrently on object stores); missing ones left out."""
        if not paths:
            return {}
        got = self.fs.cat(paths, on_error="return")
        if not isinstance(got, dict):
            got = {paths[0]: got}
        return {p: v for p, v in got.items() if isinstance(v, bytes)}

    def stats(self) -> CacheStats:
        """Entries, their bytes (results and records), hits served and the credits they saved."""
        objects = self._find("objects")
        entries = sum(1 for p in objects if _name(p) == RECORD_NAME)
        size = sum(int(i.get("size") or 0) for p, i in objects.items() if PARTIAL_MARK not in _name(p))
        hits, ledgers = self._hits()
        folded = {n for led in ledgers for n in led.get("folded", [])}
        live = [v for p, v in hits.items() if self._rel(p) not in folded]
        return CacheStats(
            entries=entries,
            bytes=size,
            hits=len(live) + sum(led["hits"] for led in ledgers),
            credits_saved=round(sum(c for _, _, c in live) + sum(led["credits"] for led in ledgers), 6),
        )

    def _rel(self, path: str) -> str:
        return path[len(self.root) + 1 :]

    def prune(self, older_than: float, *, now: float | None = None, dry_run: bool = False) -> PruneResult:
        """Remove entries not used for ``older_than`` seconds (last use: the newest of the record's
        ``created_at`` and its hits), orphan blobs and partial files older than that, and fold
        older hit markers into the ledger, so ``stats()`` keeps counting what they saved.

        ``dry_run`` removes nothing and says what would go. An entry in use while it is pruned
        is a miss for that user (paid once more), never a wrong or partial result.
        """
        if not older_than >= 0:
            raise InvalidConfigError(f"older_than must be 0 or more seconds, got {older_than!r}")
        now = time.time() if now is None else now
        cutoff = now - older_than
        objects = self._find("objects")
        hits, ledgers = self._hits()
        already = {n for led in ledgers for n in led.get("folded", [])}
        last_hit: dict[str, float] = {}
        for digest, at, _ in hits.values():
            last_hit[digest] = max(at, last_hit.get(digest, 0.0))
        dirs: dict[str, dict[str, dict[str, Any]]] = {}
        for path, info in objects.items():
            dirs.setdefault(path.rsplit("/", 1)[0], {})[path] = info
        records = self._cat([f"{d}/{RECORD_NAME}" for d in dirs if f"{d}/{RECORD_NAME}" in dirs[d]])
        doomed_records: list[str] = []  # removed first: a reader never finds a record without its blob
        doomed: list[str] = []
        entries = size = 0
        for where, files in dirs.items():
            digest = _name(where)
            record_path = f"{where}/{RECORD_NAME}"
            rec = None
            if record_path in records:
                try:
                    rec = _parse_record(records[record_path], digest)
                except ValueError:
                    rec = None
            if rec is not None and max(float(rec["created_at"]), last_hit.get(digest, 0.0)) < cutoff:
                entries += 1
                size += sum(int(i.get("size") or 0) for i in files.values())
                doomed_records.append(record_path)
                doomed += [p for p in files if p != record_path]
                continue
            for path, info in files.items():
                if rec is not None and (path == record_path or _name(path) == rec["blob"]):
                    continue
                mtime = _mtime(info)
                if mtime is not None and mtime < cutoff:
                    size += int(info.get("size") or 0)
                    doomed.append(path)
        old_hits = [p for p, (_, at, _) in hits.items() if at < cutoff]
        if not dry_run:
            self._rm(doomed_records)
            self._rm(doomed)
            self._rmdirs({p.rsplit("/", 1)[0] for p in doomed_records + doomed})
            # The ledger names the markers it folds, and markers a ledger names are only removed:
            # a prune cut short before they are gone never counts them twice.
            new = [p for p in old_hits if self._rel(p) not in already]
            if new:
                ledger = {
                    "version": 1,
                    "at": now,
                    "hits": len(new),
                    "credits": round(sum(hits[p][2] for p in new), 6),
                    "folded": [self._rel(p) for p in new],
                }
                name = f"{int(now * 1000)}-{uuid.uuid4().hex[:8]}.json"
                write_bytes_atomic(
                    self._url(f"{self.root}/ledger/{name}"), json.dumps(ledger).encode(), self.storage_options
                )
            if old_hits:
                self._rm(old_hits)
                self._rmdirs({p.rsplit("/", 1)[0] for p in old_hits})
        return PruneResult(entries, size, len(old_hits), dry_run)

    def _rm(self, paths: list[str]) -> None:
        """Remove files, in the order given; missing ones are no error."""
        if len(paths) > 1 and not is_local(self.fs):
            try:
                self.fs.rm(paths)  # object stores delete in bulk (1000 keys a request on S3)
                return
            except (FileNotFoundError, OSError):
                pass  # one of them is gone: go one by one
        for path in paths:
            try:
                self.fs.rm(path)
            except (FileNotFoundError, OSError):
                pass

    def _rmdirs(self, dirs: Iterable[str]) -> None:
        """Remove empty local folders left behind (object stores have none)."""
        if not is_local(self.fs):
            return
        for where in sorted(dirs, reverse=True):
            for path in (where, where.rsplit("/", 1)[0]):
                try:
                    self.fs.rmdir(path)
                except OSError:
                    break


__all__ = [
    "CacheCorruptError",
    "CacheEntry",
    "CacheError",
    "CacheHit",
    "CacheKey",
    "CacheStats",
    "HashingReader",
    "PruneResult",
    "ResultCache",
    "cache_key",
    "canonical_config",
    "key_for_call",
    "open_hashing",
    "parse_age",
    "sha256_of",
]
