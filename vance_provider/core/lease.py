"""An exclusive lease on a batch, kept beside its manifest, so two runs never work one batch at once.

Without it, two runs of the same batch (two terminals, an Airflow retry beside a zombie, a Dagster
run and a backfill) each submit every input: the web API has no idempotency key, so each pays.

- Local disk: an OS lock (``fcntl.flock``) on ``<manifest>.lock``. The OS drops it when the holder
  exits, however it exits, so a dead holder never blocks anyone.
- Object stores: a conditional create of ``<manifest>.lock`` (``If-None-Match: *`` on S3), then a
  re-read that checks the owner. The holder renews a heartbeat; a lease whose heartbeat has
  expired is taken over with a log line.

The lease file holds who holds it (owner, host, pid, since, heartbeat, expiry), so the error a
second run gets names the holder. A run that gives the same ``owner`` as the holder (the same
Airflow task instance resuming after a deferral, say) re-enters the lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from fsspec.core import url_to_fs

from .errors import BatchLockedError
from .storage import is_local

log = logging.getLogger("vance_provider.lease")
LEASE_TTL = 120.0  # seconds an object-store lease lives without a heartbeat
POLL = 0.5  # how often a waiting run looks again


class BatchLease:
    def __init__(
        self,
        manifest_url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
        ttl: float = LEASE_TTL,
    ) -> None:
        self.url = manifest_url + ".lock"
        self.fs, self.path = url_to_fs(self.url, **(storage_options or {}))
        self.local = is_local(self.fs)
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.held = False
        self._fd: int | None = None

    def record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "heartbeat": now,
            "expires": now + self.ttl,
        }

    # --- acquiring ------------------------------------------------------------------------
    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lease, waiting up to ``timeout`` seconds; raise :class:`BatchLockedError`."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            holder = self._try_local() if self.local else self._try_remote()
            if holder is None:
                self.held = True
                return
            if time.monotonic() >= deadline:
                raise BatchLockedError(
                    f"the batch of {self.url[: -len('.lock')]} is being run by {describe(holder)}",
                    holder={k: v for k, v in holder.items() if k != "token"},
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
        try:
            same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the holder released (unlinked) it between our open and our lock
            os.close(fd)
            return self._try_local()
        previous = _parse(os.pread(fd, 4096, 0))
        if previous:  # its holder exited without releasing it (killed): the OS dropped the lock
            log.warning("taking over the batch lease left by %s (the process is gone)", describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.record()).encode(), 0)
        self._fd = fd
        return None

    def _try_remote(self) -> dict[str, Any] | None:
        payload = json.dumps(self.record()).encode()
        try:
            self.fs.pipe_file(self.path, payload, mode="create")
        except (FileExistsError, OSError):
            holder = self._read()
            if holder is None:
                return {"owner": "another run"}  # it was being replaced: look again
            if holder.get("owner") == self.owner:
                log.info("re-entering the batch lease held by the same owner %s", self.owner)
            elif holder.get("expires", 0) > time.time():
                return holder
            else:
                log.warning("taking over the stale batch lease of %s (heartbeat expired)", describe(holder))
            self.fs.pipe_file(self.path, payload)
        # Two runs may both take over a stale lease at once: the last write wins, so re-read.
        current = self._read()
        if not current or current.get("token") != self.token:
            return current or {"owner": "another run"}
        return None

    def _read(self) -> dict[str, Any] | None:
        try:
            return _parse(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None

    # --- holding --------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew an object-store lease (local locks need none); raise if another run took it."""
        if not self.held or self.local:
            return
        current = self._read()
        if current is not None and current.get("token") != self.token:
            self.held = False
            raise BatchLockedError(
                f"the batch lease {self.url} was taken over by {describe(current)}",
                holder={k: v for k, v in current.items() if k != "token"},
                hint="this run stops submitting; rerun when the other run has finished",
            )
        self.fs.pipe_file(self.path, json.dumps(self.record()).encode())

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.local:
            if self._fd is not None:
                try:
                    os.unlink(self.path)  # while still locked: no one else holds it now
                except FileNotFoundError:
                    pass
                os.close(self._fd)
                self._fd = None
            return
        current = self._read()
        if current is not None and current.get("token") == self.token:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe(holder: dict[str, Any]) -> str:
    parts = [str(holder.get("owner", "another run"))]
    if holder.get("host") and holder.get("pid"):
        parts.append(f"(host {holder['host']}, pid {holder['pid']})")
    if holder.get("heartbeat"):
        parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['heartbeat']))}")
    return " ".join(parts)
