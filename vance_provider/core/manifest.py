"""The batch manifest: input -> job id -> state -> output, kept beside the outputs.

It is rewritten atomically (write a hidden temporary file, then rename), so a
crash never leaves it half-written, and a rerun resumes from it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from .errors import ManifestError, ManifestMismatchError
from .storage import join, write_bytes_atomic

MANIFEST_NAME = "_vance_manifest.json"
VERSION = 1


class ItemState(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"  # a job exists on the service
    SUCCEEDED = "succeeded"  # the job finished; the result is not stored yet
    DONE = "done"  # the result is stored under its final name
    FAILED = "failed"
    SKIPPED = "skipped"  # not attempted (budget, credits, policy)


@dataclass
class ManifestItem:
    source: str
    fingerprint: str  # of the input (etag or size + mtime)
    call: str  # hash of the tool, config and API
    output: str | None = None
    state: ItemState = ItemState.PENDING
    job_id: str | None = None
    idempotency_key: str | None = None
    generation: int = 0  # bumped after a failure so a retry is a new submission
    credits: float = 0.0
    error_code: str | None = None
    error: str | None = None
    tool: str = ""
    job_failed: bool = False  # the last job failed on the service (refunded): retry with a new key
    charges: list[dict[str, Any]] = field(default_factory=list)  # every job paid for: job_id, credits, at
    estimate: float | None = None  # expected credits when they depend on the input (video), else None
    media_info: dict[str, Any] | None = None  # a video's size and duration, sent so the service prices it
    input_sha256: str | None = None  # of the input's bytes, when a result cache is used
    cached: bool = False  # the output was copied from the result cache (0 credits)
    updated_at: float = field(default_factory=time.time)

    def set(self, state: ItemState, **changes: Any) -> None:
        self.state = state
        for k, v in changes.items():
            setattr(self, k, v)
        self.updated_at = time.time()


class Manifest:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = storage_options
        self.items: dict[str, ManifestItem] = {}
        self.meta: dict[str, Any] = {}
        self._version = 0
        self._saved = 0
        self._lock = asyncio.Lock()

    @classmethod
    def for_destination(cls, destination: str, storage_options: dict[str, Any] | None = None) -> Manifest:
        return cls(join(destination, MANIFEST_NAME), storage_options)

    def load(self) -> Manifest:
        """Read the manifest if there is one; a malformed one is a :class:`ManifestError`."""
        try:
            with fsspec.open(self.url, "rb", **(self.storage_options or {})) as fh:
                raw = fh.read()
        except FileNotFoundError:
            return self
        except IsADirectoryError:
            raise self._malformed("it is a folder, not a file") from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise self._malformed(f"it is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise self._malformed(f"it holds a JSON {type(data).__name__}, not an object")
        if data.get("version") != VERSION:
            raise ManifestError(
                f"the manifest {self.url} has version {data.get('version')!r}, expected {VERSION}",
                hint="it was written by another version of vance-pipelines; "
                "start afresh with fresh=True (--fresh), which archives it",
            )
        meta, items = data.get("meta", {}), data.get("items", [])
        if not isinstance(meta, dict) or not isinstance(items, list):
            raise self._malformed("'meta' must be an object and 'items' a list")
        loaded: dict[str, ManifestItem] = {}
        for n, entry in enumerate(items):
            try:
                item = ManifestItem(**{**entry, "state": ItemState(entry["state"])})
                if not isinstance(item.source, str) or not isinstance(item.charges, list):
                    raise TypeError("source must be a string and charges a list")
            except (TypeError, KeyError, ValueError) as exc:
                raise self._malformed(
                    f"item {n} is not a manifest item ({type(exc).__name__}: {exc})"
                ) from None
            loaded[item.source] = item
        self.meta, self.items = meta, loaded
        return self

    def _malformed(self, what: str) -> ManifestError:
        return ManifestError(
            f"the manifest {self.url} cannot be read: {what}",
            hint="nothing was spent; if you don't need it, start afresh with fresh=True (--fresh), "
            "which archives it, or move it away",
        )

    def check_identity(self, identity: dict[str, Any]) -> None:
        """Refuse a manifest written for another batch; record ``identity`` in a new one.

        ``identity``: source, destination, tool, config (a fingerprint), api. Manifests written
        before identities were recorded are checked on the fields they have (tool, api, destination).
        """
        known = self.meta.get("identity") or {
            k: self.meta[k] for k in ("tool", "api", "destination") if k in self.meta
        }
        for field_name, value in identity.items():
            if field_name in known and value is not None and known[field_name] not in (None, value):
                raise ManifestMismatchError(
                    f"the manifest {self.url} belongs to another batch: its {field_name} is "
                    f"{known[field_name]!r}, this run's is {value!r}",
                    hint="write to another destination (or another manifest), or start afresh with "
                    "fresh=True (--fresh), which archives the old manifest",
                )
        self.meta["identity"] = identity

    def archive(self) -> str | None:
        """Move the manifest aside (``fresh=True``); returns where it went, if there was one."""
        fs, path = url_to_fs(self.url, **(self.storage_options or {}))
        if not fs.exists(path):
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = path[: -len(".json")] if path.endswith(".json") else path
        target = f"{base}.{stamp}-{uuid.uuid4().hex[:4]}.json"
        if fs.isdir(path):
            target = target.replace(".json", "")
        fs.mv(path, target, recursive=True)
        self.items, self.meta = {}, {}
        return target

    def touch(self) -> int:
        """Mark the manifest as changed; the next ``flush`` writes it. Returns the change's number."""
        self._version += 1
        return self._version

    async def flush_until(self, version: int) -> None:
        """Make sure change ``version`` is on storage (usually the periodic flush already did it)."""
        if self._saved < version:
            await self.flush()

    def to_json(self, items: list[ManifestItem] | None = None) -> bytes:
        # A shallow copy of each item (asdict deep-copies) and no indentation: this runs often.
        rows = [dict(vars(i)) for i in (self.items.values() if items is None else items)]
        return json.dumps(
            {"version": VERSION, "meta": self.meta, "items": rows}, separators=(",", ":"), default=str
        ).encode()

    def _write(self, items: list[ManifestItem]) -> None:
        write_bytes_atomic(self.url, self.to_json(items), self.storage_options)

    def save(self) -> None:
        version = self._version
        write_bytes_atomic(self.url, self.to_json(), self.storage_options)
        self._saved = max(self._saved, version)

    async def flush(self) -> None:
        """Write the manifest if it changed since the last write (concurrent callers coalesce)."""
        if self._saved >= self._version:
            return
        async with self._lock:
            if self._saved >= self._version:
                return
            # Serialised and written off the event loop, from a snapshot of the item list (items
            # change only by attribute assignment while a batch runs, never by insertion).
            version, items = self._version, list(self.items.values())
            await asyncio.to_thread(self._write, items)
            self._saved = max(self._saved, version)
