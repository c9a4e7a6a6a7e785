"""A property test of the fenced lease: two or three holders of one destination, driven through
any interleaving of acquiring, working, releasing, pauses (time passing), clock skew and crashes,
on local disk and on moto S3. Whatever happens:

- at most one holder creates jobs at any time: once a job was created under a newer lease, no
  earlier lease ever creates one again (every job creation passed ``fence()`` first);
- no input is paid twice: each holder pays only for inputs missing from the manifest it loaded, and
  writes the manifest through the lease (a holder that lost it writes nothing);
- a holder passes ``fence()`` only while it is the latest to take the lease;
- a lease whose holder crashed on this host, or (S3) that the store's clock says expired, is
  taken at once; a live one (S3: by the store's clock, whatever the workers' clocks say) is not.

Time never passes for real: a pause ages the lease object on the store (its LastModified).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_lease import age_object
from vance_provider.core.api.errors import BatchLockedError
from vance_provider.core.state.lease import BatchLease, Identity, LeaseLostError, fence_writes
from vance_provider.core.state.manifest import MANIFEST_NAME, ItemState, Manifest, ManifestItem

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

TTL = 100.0
MARGIN = 5.0  # the store's timestamps have 1 s steps and real time passes a little during a test
INPUTS = [f"in/p{i:02d}.jpg" for i in range(12)]
HOLDERS = st.integers(0, 2)
_pids = itertools.count(1000)


@dataclass
class Holder:
    host_id: str
    skew: float = 0.0
    lease: BatchLease | None = None
    manifest: Manifest | None = None
    epoch: int = 0  # which taking of the lease this holder works under


@dataclass
class Store:
    """Where the machine runs: a destination and, on S3, how to age the lease object."""

    destination: str
    options: dict[str, Any] | None = None
    bucket: str | None = None
    key: str | None = None
    dead: set[int] = field(default_factory=set)


class LeaseMachine(RuleBasedStateMachine):
    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.s3 = self.store.bucket is not None
        # Holders 0 and 1 share a machine (a dead pid there is seen at once); 2 is on another.
        self.holders = [Holder("host-a"), Holder("host-a"), Holder("host-b")]
        self.now = 0.0  # the model's time; each holder's clock is now + its skew
        self.current: int | None = None  # the holder that took the lease last, while it is held
        self.current_pid: int | None = None
        self.age = 0.0  # seconds since the lease object was last written (S3)
        self.epochs = itertools.count(1)
        self.last_creator: int | None = None  # epoch of the last job created
        self.closed: set[int] = set()  # epochs a newer one has created jobs after
        self.paid: list[tuple[str, int]] = []  # (input, epoch) of every job created

    # --- the model's view of the lease ----------------------------------------------------------
    def _free(self, h: int) -> bool | None:
        """Whether holder ``h`` must get the lease (True), must be refused (False), or may go
        either way (None: within MARGIN of expiry)."""
        if self.current is None:
            return True
        if not self.s3:
            return False  # an OS lock: held until released or its process dies
        same_host = self.holders[h].host_id == self.holders[self.current].host_id
        if self.current_pid in self.store.dead and same_host:
            return True  # a dead pid on this very host is seen at once
        if self.age >= TTL + MARGIN:
            return True
        if self.age <= TTL - MARGIN:
            return False
        return None

    def _new_lease(self, h: int) -> BatchLease:
        holder = self.holders[h]
        pid = next(_pids)
        return BatchLease.for_batch(
            self.store.destination,
            self.store.options,
            owner=f"holder-{h}-{pid}",
            ttl=TTL,
            clock=lambda: 1.9e9 + self.now + holder.skew,
            alive=lambda p, _started: p not in self.store.dead,
            identity=Identity(holder.host_id, holder.host_id, pid, None),
        )

    # --- rules ----------------------------------------------------------------------------------
    @rule(h=HOLDERS)
    def acquire(self, h: int) -> None:
        holder = self.holders[h]
        if holder.lease is not None and holder.lease.held:
            return
        free = self._free(h)
        lease = self._new_lease(h)
        try:
            lease.acquire()
        except BatchLockedError:
            assert free is not True, "a free lease was refused"
            return
        assert free is not False, "a live lease was taken over"
        holder.lease, holder.epoch = lease, next(self.epochs)
        holder.manifest = Manifest.for_destination(self.store.destination, self.store.options).load()
        fence_writes(holder.manifest, lease)
        self.current, self.current_pid, self.age = h, lease.me.pid, 0.0

    @rule(h=HOLDERS)
    def work(self, h: int) -> None:
        """Fence, then create one job for an input the holder's manifest lacks, and record it."""
        holder = self.holders[h]
        if holder.lease is None or holder.manifest is None:
            return
        try:
            holder.lease.fence()
        except LeaseLostError:
            assert self.current != h, "the current holder was fenced out"
            return
        assert self.current == h, f"holder {h} passed the fence while {self.current} holds the lease"
        if self.s3:
            self.age = 0.0  # the fence renewed it
        todo = [i for i in INPUTS if i not in holder.manifest.items]
        if not todo:
            return
        if self.last_creator is not None and self.last_creator != holder.epoch:
            self.closed.add(self.last_creator)
        assert holder.epoch not in self.closed, "an older lease created a job after a newer one"
        self.last_creator = holder.epoch
        source = todo[0]
        self.paid.append((source, holder.epoch))
        item = ManifestItem(source, "fp", "call", state=ItemState.SUBMITTED, job_id=f"job-{len(self.paid)}")
        holder.manifest.items[source] = item
        holder.manifest.save()  # fenced too

    @rule(h=HOLDERS)
    def release(self, h: int) -> None:
        holder = self.holders[h]
        if holder.lease is None:
            return
        was_holding = holder.lease.held and self.current == h
        holder.lease.release()
        holder.lease = holder.manifest = None
        if was_holding:
            self.current = self.current_pid = None

    @rule(h=HOLDERS)
    def crash(self, h: int) -> None:
        """kill -9: the process is gone without a word (a local OS lock goes with it)."""
        holder = self.holders[h]
        if holder.lease is None:
            return
        holder.lease.abandon()
        self.store.dead.add(holder.lease.me.pid)
        if self.current == h and not self.s3:
            self.current = self.current_pid = None
        holder.lease = holder.manifest = None

    @rule(seconds=st.sampled_from([3.0, 30.0, 60.0, 250.0]))
    def pause(self, seconds: float) -> None:
        """Time passes with nobody renewing: a GC pause, a stopped container, a closed laptop."""
        self.now += seconds
        self.age += seconds
        if self.s3 and self.current is not None:
            assert self.store.bucket and self.store.key
            age_object(self.store.bucket, self.store.key, seconds)

    @rule(h=HOLDERS, skew=st.sampled_from([-3600.0, 0.0, 300.0, 86400.0]))
    def skew_clock(self, h: int, skew: float) -> None:
        self.holders[h].skew = skew

    # --- invariants -------------------------------------------------------------------------------
    @invariant()
    def no_input_paid_twice(self) -> None:
        sources = [s for s, _ in self.paid]
        assert len(sources) == len(set(sources)), f"paid twice: {sources}"

    def teardown(self) -> None:
        for holder in self.holders:
            if holder.lease is not None:
                holder.lease.abandon()


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_lease_on_local_disk(tmp_path: Path) -> None:
    def machine() -> LeaseMachine:
        class Local(LeaseMachine):
            store = Store(str(tmp_path / uuid.uuid4().hex / "out"))

        return Local()

    run_state_machine_as_test(machine, settings=SETTINGS)


def test_lease_on_s3(s3: Any) -> None:
    _fs, options, bucket = s3

    def machine() -> LeaseMachine:
        prefix = uuid.uuid4().hex[:8]

        class OnS3(LeaseMachine):
            store = Store(
                f"s3://{bucket}/{prefix}/out", options, bucket, f"{prefix}/out/{MANIFEST_NAME}.lock"
            )

        return OnS3()

    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=25))
