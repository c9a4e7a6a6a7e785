"""The batch manifest: input -> job id -> state -> output, kept beside the outputs.

It is rewritten atomically (write a hidden temporary file, then rename), so a
crash never leaves it half-written, and a rerun resumes from it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from ..api.errors import ManifestError, ManifestMismatchError
from ..secrets import redact
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
    input_sha256: str | None = None  # of the input's bytes: a file touched (same bytes) is the same input
    listed_as: str | None = None  # the listing's fingerprint of the same bytes, after the file was touched
    cached: bool = False  # the output was copied from the result cache (0 credits)
    saved: float = 0.0  # what the cached result cost when it was paid for
    submitted_by: str | None = None  # the run that created the current job (``job_id``)
    # The first download of a job's result, recorded before it starts (web API: the download is
    # the payment): {"job_id", "run", "at"}. A later run that finds it for the same job may have
    # been paid for already, and reports those credits apart.
    fetch: dict[str, Any] | None = None
    # Credits set aside in an account budget for the job in flight ({"id", "budget", "credits"}),
    # carried from the process that created the job to the one that collects it.
    reservation: dict[str, Any] | None = None
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ManifestItem:
        """An item from its stored form, checked, without the per-field cost of ``__init__``
        (a manifest may hold 100k of them)."""
        if not isinstance(row, dict):
            raise TypeError(f"a {type(row).__name__}, not an object")
        if unknown := row.keys() - _FIELDS:
            raise TypeError(f"unknown field(s) {sorted(unknown)}")
        if missing := _REQUIRED - row.keys():
            raise TypeError(f"missing field(s) {sorted(missing)}")
        if not isinstance(row["source"], str) or not isinstance(row.get("charges", []), list):
            raise TypeError("source must be a string and charges a list")
        item = object.__new__(cls)
        item.__dict__.update(_defaults(), **row)
        item.__dict__["state"] = ItemState(row["state"])
        return item

    @classmethod
    def new(cls, source: str, fingerprint: str, call: str, **fields_: Any) -> ManifestItem:
        """A new item, as ``ManifestItem(...)`` makes it, without a hooked assignment per field
        (a batch of 100k inputs plans 100k of them before its first job)."""
        if not _FIELDS.issuperset(fields_):
            raise TypeError(f"unknown field(s) {sorted(fields_.keys() - _FIELDS)}")
        item = object.__new__(cls)
        values = item.__dict__
        values.update(
            _STATIC, charges=[], updated_at=time.time(), source=source, fingerprint=fingerprint, call=call
        )
        values.update(fields_)
        return item

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        sink = self.__dict__.get("_sink")
        if sink is not None:  # the manifest holding this item hears of the change
            sink.add(self.source)

    def row(self) -> dict[str, Any]:
        data = dict(vars(self))
        data.pop("_sink", None)
        return data

    def set(self, state: ItemState, **changes: Any) -> None:
        self.state = state
        for k, v in changes.items():
            setattr(self, k, v)
        self.updated_at = time.time()

    def settle(self, state: ItemState, **changes: Any) -> None:
        """``set``, with the last error (and whether the service failed the job) cleared."""
        self.set(state, **{"error": None, "error_code": None, "job_failed": False, **changes})


_FIELDS = frozenset(f.name for f in fields(ManifestItem))
_REQUIRED = frozenset(
    f.name for f in fields(ManifestItem) if f.default is MISSING and f.default_factory is MISSING
) | {"state"}


_STATIC = {f.name: f.default for f in fields(ManifestItem) if f.default is not MISSING}
_FACTORIES = {f.name: f.default_factory for f in fields(ManifestItem) if f.default_factory is not MISSING}
assert set(_FACTORIES) == {"charges", "updated_at"}, "ManifestItem.new() sets these two itself"


def _defaults() -> dict[str, Any]:
    return {**_STATIC, **{name: make() for name, make in _FACTORIES.items()}}


class _Items(dict[str, ManifestItem]):
    """The manifest's items: an item put here reports its later changes to ``dirty``."""

    def __init__(self, dirty: set[str]) -> None:
        super().__init__()
        self.dirty = dirty

    def __setitem__(self, source: str, item: ManifestItem) -> None:
        item.__dict__["_sink"] = self.dirty
        self.dirty.add(source)
        super().__setitem__(source, item)


class Manifest:
    """The items of one batch, kept at ``url``.

    Small manifests are rewritten whole (atomically) on each flush. From ``JOURNAL_FROM`` items
    on, a flush writes only the items changed since the last one, as a numbered segment in
    ``<url>.journal/``, so the bytes written follow the work done, not the batch's size; when the
    segments outweigh the manifest, or the batch ends, they are folded into it (compaction). Each
    write is atomic and the manifest records the last segment folded in, so a crash at any point
    loads the same state.
    """

    JOURNAL_FROM = 256

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.journal_url = url + ".journal"
        self.storage_options = storage_options
        self._dirty: set[str] = set()
        self.items: dict[str, ManifestItem] = _Items(self._dirty)
        self.meta: dict[str, Any] = {}
        self._version = 0
        self._saved = 0
        self._lock = asyncio.Lock()
        self._seq = 0  # the last journal segment written (or found)
        self._base_bytes = 0
        self._journal_bytes = 0

    @classmethod
    def for_destination(cls, destination: str, storage_options: dict[str, Any] | None = None) -> Manifest:
        return cls(join(destination, MANIFEST_NAME), storage_options)

    def load(self) -> Manifest:
        """Read the manifest if there is one; a malformed one is a :class:`ManifestError`."""
        found = self._read()
        if found is None:
            return self
        meta, entries, size = found
        loaded: dict[str, ManifestItem] = {}
        for what, entry in entries:
            try:
                item = ManifestItem.from_row(entry)
            except (TypeError, KeyError, ValueError) as exc:
                raise self._malformed(
                    f"{what} is not a manifest item ({type(exc).__name__}: {exc})"
                ) from None
            loaded[item.source] = item
        self.meta = meta
        self.items = _Items(self._dirty)
        for source, item in loaded.items():
            self.items[source] = item
        self._dirty.clear()
        self._base_bytes = size
        return self

    def rows(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The stored items as plain dicts, journal applied (for readers such as the credit
        report, which need no items): ``(meta, rows)``; empty when there is no manifest."""
        found = self._read()
        if found is None:
            return {}, []
        by_source = {
            entry["source"]: entry for _, entry in found[1] if isinstance(entry, dict) and "source" in entry
        }
        return found[0], list(by_source.values())

    def _read(self) -> tuple[dict[str, Any], list[tuple[str, Any]], int] | None:
        """(meta, [(where, stored item)] in the order they apply, size of the manifest file)."""
        try:
            with fsspec.open(self.url, "rb", **(self.storage_options or {})) as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
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
        entries = [(f"item {n}", entry) for n, entry in enumerate(items)]
        upto = data.get("journal_upto", 0)
        for seq, rows in self._read_journal(upto if isinstance(upto, int) else 0):
            if not isinstance(rows, list):
                raise self._malformed(f"journal segment {seq} holds no list of items")
            entries += [(f"journal segment {seq}, item {n}", entry) for n, entry in enumerate(rows)]
            self._seq = max(self._seq, seq)
        return meta, entries, len(raw)

    def _read_journal(self, upto: int) -> list[tuple[int, Any]]:
        """The segments written after the manifest's last compaction, in order."""
        fs, path = url_to_fs(self.journal_url, **(self.storage_options or {}))
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        segments = []
        for name in names:
            stem = name.removesuffix(".json")
            if name.endswith(".json") and stem.isdigit() and int(stem) > upto:
                try:
                    data = json.loads(fs.cat_file(f"{path}/{name}"))
                except (ValueError, FileNotFoundError) as exc:
                    raise self._malformed(f"journal segment {name} cannot be read ({exc})") from None
                segments.append((int(stem), data.get("items") if isinstance(data, dict) else None))
        return sorted(segments, key=lambda s: s[0])

    def _malformed(self, what: str) -> ManifestError:
        return ManifestError(
            f"the manifest {self.url} cannot be read: {what}",
            hint="nothing was spent; if you don't need it, start afresh with fresh=True (--fresh), "
            "which archives it, or move it away",
        )

    def check_outputs(self, destination: str) -> None:
        """Refuse items a hand edit has made unsafe, before anything is spent: every output lies
        inside ``destination`` (no ``..``), belongs to one item only, and an item whose job ended
        well (succeeded or done) has one. A :class:`ManifestError` names the item."""
        prefix = destination.rstrip("/") + "/"
        owners: dict[str, str] = {}
        for source, item in self.items.items():
            out = item.output
            if out is None or out == "":
                if item.state in (ItemState.SUCCEEDED, ItemState.DONE):
                    raise self._bad_item(source, f"it is {item.state.value} but has no output")
                continue
            if not isinstance(out, str):
                raise self._bad_item(source, f"its output is a {type(out).__name__}, not a path")
            rel = out[len(prefix) :] if out.startswith(prefix) else None
            parts = rel.replace("\\", "/").split("/") if rel else []
            if rel is None or not rel or any(p in ("", ".", "..") for p in parts):
                raise self._bad_item(source, f"its output {out} is not inside the destination {destination}")
            other = owners.setdefault(out.lower(), source)
            if other != source:
                raise self._bad_item(source, f"its output {out} is also the output of {other}")

    def _bad_item(self, source: str, what: str) -> ManifestError:
        return ManifestError(
            f"the manifest {self.url} cannot be used: the item {source}: {what}",
            hint="nothing was spent; the manifest was edited by hand? Restore it, remove that item "
            "from it (its input is then done again), or start afresh with fresh=True (--fresh), "
            "which archives it",
        )

    def check_identity(self, identity: dict[str, Any], shown: dict[str, Any] | None = None) -> None:
        """Refuse a manifest written for another batch; record ``identity`` in a new one.

        ``identity``: source, destination, tool, config (a fingerprint), api. ``shown``: readable
        values of fields that are fingerprints (the config as the user gave it), kept beside them
        so that a refusal shows what differs, not two hashes. Manifests written before identities
        were recorded are checked on the fields they have (tool, api, destination).
        """
        known = self.meta.get("identity") or {
            k: self.meta[k] for k in ("tool", "api", "destination") if k in self.meta
        }
        raw_shown = self.meta.get("shown")
        known_shown: dict[str, Any] = raw_shown if isinstance(raw_shown, dict) else {}
        shown = shown or {}
        for field_name, value in identity.items():
            if field_name in known and value is not None and known[field_name] not in (None, value):
                before, now = known_shown.get(field_name), shown.get(field_name)
                if before is None or now is None or before == now:
                    before, now = known[field_name], value
                raise ManifestMismatchError(
                    f"the manifest {self.url} belongs to another batch: its {field_name} is "
                    f"{redact(_show(before))}, this run's is {redact(_show(now))}",
                    hint="write this batch to another destination; or start afresh with fresh=True "
                    "(--fresh): the old manifest is archived and the outputs already there are kept "
                    "(a new output is never written over one of them unless overwrite=True "
                    "(--overwrite) says so)",
                )
        self.meta["identity"] = identity
        if shown:
            self.meta["shown"] = shown

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
        if fs.exists(path + ".journal"):
            fs.mv(path + ".journal", target + ".journal", recursive=True)
        self.items, self.meta = _Items(self._dirty), {}
        self._seq = self._base_bytes = self._journal_bytes = 0
        return target

    def touch(self) -> int:
        """Mark the manifest as changed; the next ``flush`` writes it. Returns the change's number."""
        self._version += 1
        return self._version

    async def flush_until(self, version: int) -> None:
        """Make sure change ``version`` is on storage (usually the periodic flush already did it)."""
        if self._saved < version:
            await self.flush()

    def to_json(self, items: list[ManifestItem] | None = None, journal_upto: int = 0) -> bytes:
        rows = [i.row() for i in (self.items.values() if items is None else items)]
        data = {"version": VERSION, "meta": self.meta, "items": rows, "journal_upto": journal_upto}
        return json.dumps(data, separators=(",", ":"), default=str).encode()

    def _write(self, items: list[ManifestItem]) -> None:
        """The whole manifest, with every journal segment so far folded in; then drop those."""
        upto = self._seq
        payload = self.to_json(items, upto)
        write_bytes_atomic(self.url, payload, self.storage_options)
        self._base_bytes, self._journal_bytes = len(payload), 0
        if upto:
            fs, path = url_to_fs(self.journal_url, **(self.storage_options or {}))
            try:
                fs.rm(path, recursive=True)
            except (FileNotFoundError, OSError):
                pass  # left over: the next load skips segments already folded in

    def _append(self, items: list[ManifestItem]) -> None:
        """One journal segment with the items changed since the last flush."""
        self._seq += 1
        payload = json.dumps({"items": [i.row() for i in items]}, separators=(",", ":"), default=str).encode()
        write_bytes_atomic(join(self.journal_url, f"{self._seq:08d}.json"), payload, self.storage_options)
        self._journal_bytes += len(payload)

    def save(self) -> None:
        version = self._version
        self._write(list(self.items.values()))
        self._dirty.clear()
        self._saved = max(self._saved, version)

    async def flush(self, *, compact: bool = False) -> None:
        """Write what changed since the last write (concurrent callers coalesce); ``compact``
        writes the whole manifest and folds the journal in."""
        if self._saved >= self._version and not (compact and self._journal_bytes):
            return
        async with self._lock:
            if self._saved >= self._version and not (compact and self._journal_bytes):
                return
            # Serialised and written off the event loop, from a snapshot of the changed items
            # (taken here, on the loop, where items are inserted and changed).
            version, dirty = self._version, set(self._dirty)
            self._dirty.clear()
            whole = (
                compact
                or len(self.items) < self.JOURNAL_FROM
                or not self._base_bytes
                or 2 * len(dirty) > len(self.items)
                or self._journal_bytes > self._base_bytes
            )
            try:
                if whole:
                    await _to_the_end(self._write, list(self.items.values()))
                else:
                    await _to_the_end(self._append, [self.items[s] for s in dirty if s in self.items])
            except BaseException:
                self._dirty |= dirty  # not written: still to write
                raise
            self._saved = max(self._saved, version)


def _show(value: Any) -> str:
    """A value of an identity as a message shows it: a text quoted, anything else as JSON."""
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True, default=str)


async def _to_the_end(write: Callable[[list[ManifestItem]], None], items: list[ManifestItem]) -> None:
    """Run ``write`` in a thread; a cancelled caller (Ctrl-C) still waits for it to end before the
    lock is released, so two writes never overlap and an older snapshot never lands last."""
    task = asyncio.ensure_future(asyncio.to_thread(write, items))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
