"""The batch manifest: input -> job id -> state -> output, kept beside the outputs.

It is rewritten atomically (write a hidden temporary file, then rename), so a
crash never leaves it half-written, and a rerun resumes from it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import fsspec

from .errors import ConfigurationError
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
        try:
            with fsspec.open(self.url, "rb", **(self.storage_options or {})) as fh:
                data = json.loads(fh.read())
        except FileNotFoundError:
            return self
        except ValueError as exc:
            raise ConfigurationError(
                f"the manifest {self.url} is not valid JSON ({exc})",
                hint="it is written atomically, so something else changed it; "
                "move it away to start the batch afresh",
            ) from None
        if data.get("version") != VERSION:
            raise ConfigurationError(
                f"the manifest {self.url} has version {data.get('version')}, expected {VERSION}"
            )
        self.meta = data.get("meta", {})
        for raw in data.get("items", []):
            raw["state"] = ItemState(raw["state"])
            item = ManifestItem(**raw)
            self.items[item.source] = item
        return self

    def touch(self) -> int:
        """Mark the manifest as changed; the next ``flush`` writes it. Returns the change's number."""
        self._version += 1
        return self._version

    async def flush_until(self, version: int) -> None:
        """Make sure change ``version`` is on storage (usually the periodic flush already did it)."""
        if self._saved < version:
            await self.flush()

    def to_json(self) -> bytes:
        items = [asdict(i) for i in self.items.values()]
        return json.dumps(
            {"version": VERSION, "meta": self.meta, "items": items}, indent=1, default=str
        ).encode()

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
            version, payload = self._version, self.to_json()
            await asyncio.to_thread(write_bytes_atomic, self.url, payload, self.storage_options)
            self._saved = max(self._saved, version)
