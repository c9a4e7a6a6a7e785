"""An exclusive, fenced lease on a batch's destination, so two runs never pay for one batch.

Without it, two runs of the same batch (two terminals, an Airflow retry beside a zombie, a Dagster
run and a backfill) each submit every input: the web API has no idempotency key, so each pays.

There is one lease per destination (``<destination>/_vance_manifest.json.lock``), whatever the
manifest's path; a caller whose runs have disjoint inputs by construction (Dagster's per-file
partitions) may give a ``scope`` for a lease of their own.

- Local disk: an OS lock (``fcntl.flock``) on the lease file. The OS drops it when the holder
  exits, however it exits, so a dead holder never blocks anyone; a paused one keeps it.
- S3: the lease object is created with ``If-None-Match: *`` and every later write of it is an
  ``If-Match`` on its ETag, carrying a generation number one higher. Before each job it creates,
  each payment (web API downloads) and each manifest write, the holder *fences*: it renews the
  lease with such a conditional write, and a run that finds the lease taken (412) stops with
  :class:`LeaseLostError` before paying for anything more.
- Expiry is judged by the store's clock alone: the lease object's ``Last-Modified`` against the
  ``Date`` of the store's answer. No worker's clock is compared with another's, so a worker whose
  clock runs ahead cannot take over a live lease.
- A holder on the same machine whose process is gone (``kill -9``) is seen at once (host, boot,
  pid namespace, pid and process start time are recorded), so a rerun there never waits.
- Other object stores: the same protocol over fsspec, best effort (no atomic compare-and-swap;
  expiry by watching the lease object stay unchanged for its ttl on this run's own clock).

The lease object holds who holds it, so the error a second run gets names the holder. A run that
gives the same ``owner`` as the holder (an Airflow task's trigger after its worker deferred)
re-enters the lease: it takes it over, and the earlier process is fenced out. Owner ids are
unique per attempt (:func:`new_owner`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from fsspec.core import url_to_fs

from ..api.errors import BatchLockedError, ConfigurationError
from .manifest import MANIFEST_NAME
from .storage import is_local, join

log = logging.getLogger("vance_provider.lease")
LEASE_TTL = 120.0  # seconds (by the store's clock) a lease lives without being renewed
POLL = 0.5  # how often a waiting run looks again


class LeaseLostError(BatchLockedError):
    """This run held the batch's lease and another run has taken it over (this one was paused or
    cut off from the store for longer than the lease lives). It stopped before creating another
    job or writing the manifest."""


# --- who we are ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """The process holding a lease: ``host_id`` tells one machine (and pid namespace) from another,
    ``started`` one process from a later one given the same pid."""

    host: str
    host_id: str
    pid: int
    started: str | None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError):
        return None


@functools.cache
def _host_id() -> str:
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))  # containers sharing a hostname
    except OSError:
        pass
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def this_process() -> Identity:
    stat = _proc_stat(os.getpid())
    return Identity(socket.gethostname(), _host_id(), os.getpid(), stat[1] if stat else None)


def pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this machine still runs (and is the one that started at ``started``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state in ("Z", "X"):  # killed, not reaped yet
        return False
    return started is None or start == started


def new_owner(*parts: object) -> str:
    """An owner id unique to one attempt of a run: the caller's parts (say, an Airflow task's ids
    and try number), then the host, the pid and a random part."""
    return ":".join([*(str(p) for p in parts), socket.gethostname(), str(os.getpid()), uuid.uuid4().hex[:8]])


# --- object stores ---------------------------------------------------------------------------------
@dataclass
class Snapshot:
    record: dict[str, Any] | None  # None: not a lease record
    tag: str  # the object's version (S3: its ETag)
    age: float | None  # seconds since it was last written, by the store's clock; None: unknown


class _S3Store:
    """The lease object on S3, through the botocore client under s3fs: conditional writes."""

    _checked: set[str] = set()  # endpoints and buckets seen to honour If-Match

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.bucket, _, self.key = path.partition("/")

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def read(self) -> Snapshot | None:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, dict[str, Any]]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            return await resp["Body"].read(), resp

        try:
            body, resp = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        age = (parsedate_to_datetime(date) - resp["LastModified"]).total_seconds() if date else None
        return Snapshot(_parse(body), resp["ETag"], age)

    def create(self, body: bytes) -> str | None:
        try:
            return str(self._call("put_object", Body=body, IfNoneMatch="*")["ETag"])
        except FileExistsError:
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise

    def replace(self, body: bytes, tag: str) -> str | None:
        try:
            return str(self._call("put_object", Body=body, IfMatch=tag)["ETag"])
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise

    def delete(self, tag: str) -> None:
        try:
            self._call("delete_object", IfMatch=tag)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if _precondition_failed(exc):
                return  # someone else's now: not ours to delete
        # A store without conditional deletes: delete it only if it is still ours.
        snap = self.read()
        if snap is not None and snap.tag == tag:
            try:
                self._call("delete_object")
            except OSError:
                pass

    def check_conditional(self, body: bytes) -> None:
        """Refuse a store that ignores ``If-Match`` (the lease could not fence): a write of the
        same bytes under a wrong ETag must fail. Once per endpoint and bucket."""
        endpoint = getattr(self.fs, "endpoint_url", None) or self.fs.client_kwargs.get("endpoint_url")
        where = f"{endpoint}/{self.bucket}"
        if where in self._checked:
            return
        if self.replace(body, '"00000000000000000000000000000000"') is not None:
            self._call("delete_object")  # the lease just created: leave nothing that blocks others
            raise ConfigurationError(
                f"the object store behind s3://{self.bucket} ignores conditional writes (If-Match): "
                "the batch lease cannot keep two runs from paying for the same inputs",
                hint="use a store that supports conditional writes (AWS S3, or a recent MinIO), "
                "or a local destination",
            )
        self._checked.add(where)


def _precondition_failed(exc: BaseException) -> bool:
    response = getattr(exc.__cause__, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status in (409, 412) or response.get("Error", {}).get("Code") in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    )


class _FsspecStore:
    """Any other fsspec store: best effort. Writes are read-check-write, not atomic; the age is
    how long this process has seen the object unchanged (no clock of another worker is used)."""

    def __init__(self, fs: Any, path: str, monotonic: Callable[[], float]) -> None:
        self.fs, self.path, self.monotonic = fs, path, monotonic
        self._seen: tuple[str, float] | None = None

    def read(self) -> Snapshot | None:
        try:
            body = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        tag = hashlib.sha256(body).hexdigest()
        if self._seen is None or self._seen[0] != tag:
            self._seen = (tag, self.monotonic())
        return Snapshot(_parse(body), tag, self.monotonic() - self._seen[1])

    def create(self, body: bytes) -> str | None:
        try:
            self.fs.pipe_file(self.path, body, mode="create")
        except (FileExistsError, OSError):
            return None
        return self._confirm(body)

    def replace(self, body: bytes, tag: str) -> str | None:
        current = self.read()
        if current is None or current.tag != tag:
            return None
        self.fs.pipe_file(self.path, body)
        return self._confirm(body)

    def _confirm(self, body: bytes) -> str | None:
        current = self.read()  # two writers at once: the last one wins, so look
        return (
            current.tag if current is not None and current.tag == hashlib.sha256(body).hexdigest() else None
        )

    def delete(self, tag: str) -> None:
        current = self.read()
        if current is not None and current.tag == tag:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def check_conditional(self, body: bytes) -> None:
        pass


# --- the lease -------------------------------------------------------------------------------------
class BatchLease:
    """The lease at ``<manifest_url>.lock``; a runner takes :meth:`for_batch` (one per destination).

    ``clock`` (wall time) is only written down for people to read; ``monotonic`` and ``alive``
    (is a pid of this machine running) can be replaced in tests, as can ``identity``.
    """

    def __init__(
        self,
        manifest_url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
        ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        alive: Callable[[int, str | None], bool] = pid_alive,
        identity: Identity | None = None,
    ) -> None:
        self.url = manifest_url + ".lock"
        self.fs, path = url_to_fs(self.url, **(storage_options or {}))
        self.local = is_local(self.fs)
        if self.local:  # one file whatever the spelling: relative, trailing slash, symlinked folder
            path = os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))
        self.path = path
        self.ttl, self.clock, self.alive = ttl, clock, alive
        self.me = identity or this_process()
        self.owner = owner or new_owner()
        self.token = uuid.uuid4().hex
        self.generation = 0
        self.held = False
        self.lost: LeaseLostError | None = None
        self._since = 0.0
        self._fd: int | None = None
        self._tag = ""
        self._renewals = 0
        self._lock = threading.Lock()
        self._store: _S3Store | _FsspecStore | None = None
        if not self.local:
            protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
            self._store = (
                _S3Store(self.fs, path)
                if protocol in ("s3", "s3a")
                else _FsspecStore(self.fs, path, monotonic)
            )

    @classmethod
    def for_batch(
        cls,
        destination: str,
        storage_options: dict[str, Any] | None = None,
        *,
        scope: str | None = None,
        **kwargs: Any,
    ) -> BatchLease:
        """The lease of a batch writing to ``destination``, whatever its manifest's path."""
        if scope is None:
            return cls(join(destination, MANIFEST_NAME), storage_options, **kwargs)
        name = f"_vance_lease-{hashlib.sha256(scope.encode()).hexdigest()[:16]}"
        return cls(join(destination, name), storage_options, **kwargs)

    @property
    def destination(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def record(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "host": self.me.host,
            "pid": self.me.pid,
            "host_id": self.me.host_id,
            "started": self.me.started,
            "token": self.token,
            "generation": self.generation,
            "ttl": self.ttl,
            "since": self._since,  # this worker's clock: for people, never for decisions
            "heartbeat": self.clock(),
        }

    def _payload(self) -> bytes:
        return json.dumps(self.record()).encode()

    # --- acquiring ------------------------------------------------------------------------
    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lease, waiting up to ``timeout`` seconds; raise :class:`BatchLockedError`."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            holder = self._try_local() if self.local else self._try_remote()
            if holder is None:
                self.held, self.lost, self._renewals = True, None, self._renewals + 1
                return
            if time.monotonic() >= deadline:
                raise BatchLockedError(
                    f"the batch of {self.url.removesuffix('.lock')} is being run by {describe(holder)}",
                    holder=_shown(holder),
                    hint="wait for that run to finish, or let this one wait for it "
                    "(lock_timeout / --wait-lock); a lease whose holder died is taken over by itself",
                )
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))

    def _try_local(self) -> dict[str, Any] | None:
        import fcntl

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            return holder or {"owner": "another process"}
        if not self._same_file(fd):  # the holder released (unlinked) it between our open and our lock
            os.close(fd)
            return self._try_local()
        previous = _parse(os.pread(fd, 4096, 0))
        if previous:  # its holder exited without releasing it (killed): the OS dropped the lock
            log.warning("taking over the batch lease left by %s (the process is gone)", describe(previous))
        self.token, self._since = uuid.uuid4().hex, self.clock()
        self.generation = int((previous or {}).get("generation") or 0) + 1
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._payload(), 0)
        self._fd = fd
        return None

    def _same_file(self, fd: int) -> bool:
        try:
            mine, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def _try_remote(self) -> dict[str, Any] | None:
        store = self._store
        assert store is not None
        self.token, self._since = uuid.uuid4().hex, self.clock()
        for _ in range(3):  # the lease changed under us (created, released): look again at once
            snap = store.read()
            if snap is None:
                self.generation = 1
                payload = self._payload()
                tag = store.create(payload)
                if tag is None:
                    continue
                store.check_conditional(payload)
                self._tag = tag
                return None
            why = self._takeover(snap)
            if why is None:
                return snap.record or {"owner": "another run"}
            self.generation = int((snap.record or {}).get("generation") or 0) + 1
            tag = store.replace(self._payload(), snap.tag)
            if tag is None:
                continue
            log.warning(why)
            self._tag = tag
            return None
        snap = store.read()
        return (snap.record if snap else None) or {"owner": "another run"}

    def _takeover(self, snap: Snapshot) -> str | None:
        """Why the lease in ``snap`` may be taken over now; ``None`` while it is live."""
        holder = snap.record or {}
        if holder.get("owner") == self.owner:
            return f"re-entering the batch lease held by the same owner {self.owner}"
        pid = holder.get("pid")
        if (
            holder.get("host_id") == self.me.host_id
            and isinstance(pid, int)
            and not self.alive(pid, holder.get("started"))
        ):
            return f"taking over the batch lease left by {describe(holder)} (the process is gone)"
        ttl = holder.get("ttl")
        ttl = float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else self.ttl
        if snap.age is not None and snap.age > ttl:
            return (
                f"taking over the stale batch lease of {describe(holder)} "
                f"(not renewed for {snap.age:.0f} s by the store's clock; it lives {ttl:g} s)"
            )
        return None

    # --- holding --------------------------------------------------------------------------
    def fence(self) -> None:
        """Prove that this run still holds the lease, right before it pays for something or writes
        the manifest; raise :class:`LeaseLostError` if another run has taken it.

        S3: a conditional renewal (``If-Match`` on the ETag, generation + 1); calls made while one
        is on the wire share its answer. Local disk: the locked file is still the lease file. A
        lease this run released (or never took) is not checked."""
        if self.lost is not None:
            raise self.lost
        if not self.held:
            return
        if self.local:
            if self._fd is not None and not self._same_file(self._fd):
                self._lose({"owner": "another run (the lease file was replaced)"})
            return
        seen = self._renewals
        with self._lock:
            if self.lost is not None:
                raise self.lost
            if self._renewals != seen or not self.held:
                return  # a renewal answered after we asked: it speaks for us too
            self._renew()
            self._renewals += 1

    heartbeat = fence  # renewing an object-store lease is fencing it

    def _renew(self) -> None:
        store = self._store
        assert store is not None
        self.generation += 1
        try:
            tag = store.replace(self._payload(), self._tag)
        except OSError as exc:  # cannot tell: pay for nothing until we can
            self.generation -= 1
            raise LeaseLostError(
                f"could not confirm that this run still holds the batch lease {self.url}: {exc}",
                hint="this run stopped before creating another job; rerun it: it resumes from the manifest",
            ) from None
        if tag is not None:
            self._tag = tag
            return
        snap = store.read()
        holder = (snap.record if snap else None) or {}
        if snap is not None and holder.get("token") == self.token:  # our write landed; its answer was lost
            self._tag, self.generation = snap.tag, int(holder.get("generation") or self.generation)
            return
        self._lose(holder or {"owner": "nobody (the lease was removed)"})

    def _lose(self, holder: dict[str, Any]) -> None:
        self.held = False
        self.lost = LeaseLostError(
            f"this run lost the batch lease of {self.destination} to {describe(holder)}: it was "
            f"paused or cut off from the store for longer than the lease lives ({self.ttl:g} s)",
            holder=_shown(holder),
            hint="it stopped before creating another job or writing the manifest, so nothing is paid "
            "twice: the jobs it recorded are collected by the run that holds the lease now; "
            "rerun after that run ends to pick up anything left",
        )
        log.error("%s (%s)", self.lost.message, self.lost.hint)
        raise self.lost

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.local:
            if self._fd is not None:
                try:
                    if self._same_file(self._fd):
                        os.unlink(self.path)  # while still locked: no one else holds it now
                except FileNotFoundError:
                    pass
                os.close(self._fd)
                self._fd = None
            return
        assert self._store is not None
        self._store.delete(self._tag)  # conditional: never another run's lease

    def abandon(self) -> None:
        """Let go without a word, as a killed process would (tests): a local lock is dropped by the
        OS, an object-store lease stays until it expires or its pid is seen dead."""
        self.held = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Fence(Protocol):
    def fence(self) -> None: ...


def fence_writes(manifest: Any, lease: Fence) -> None:
    """Make every write of ``manifest`` (a :class:`~.manifest.Manifest`) conditional on ``lease``:
    a run that lost it writes nothing over the manifest of the run that holds it now."""
    for name in ("_write", "_append"):  # the two ways a manifest reaches storage
        write = getattr(manifest, name)

        def fenced(items: Any, _write: Callable[[Any], None] = write) -> None:
            lease.fence()
            _write(items)

        setattr(manifest, name, fenced)


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _shown(holder: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in holder.items() if k != "token"}


def describe(holder: dict[str, Any]) -> str:
    parts = [str(holder.get("owner", "another run"))]
    if holder.get("host") and holder.get("pid"):
        parts.append(f"(host {holder['host']}, pid {holder['pid']})")
    since = holder.get("since") or holder.get("heartbeat")
    if isinstance(since, (int, float)) and since > 0:
        parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}")
    return " ".join(parts)
