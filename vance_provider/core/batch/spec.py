"""What a batch is asked to do (:class:`BatchSpec`) and what it reports (:class:`BatchResult`, :class:`Progress`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..api.errors import (
    BatchFailedError,
    InvalidConfigError,
)
from ..secrets import redact_options
from ..state.manifest import ItemState

# BatchSpec fields that may carry a credential: shown redacted in its repr.
_REDACTED_FIELDS = frozenset(
    {
        "storage_options",
        "cache_storage_options",
        "source",
        "destination",
        "manifest",
        "cache",
        "config",
        "jconfig",
    }
)


FailurePolicy = Literal["continue", "fail", "fail_fast"]


@dataclass
class BatchSpec:
    source: str | list[str]
    destination: str
    tool: str
    config: dict[str, Any] | None = None
    jconfig: dict[str, Any] | str | None = None
    output_format: str | None = None
    max_concurrency: int = 8
    credit_budget: float | None = None
    account_budget: str | None = None  # a named budget of the account, shared by every batch and worker
    poll_interval: float = 2.0
    max_poll_interval: float = 15.0
    on_failure: FailurePolicy = "fail"
    on_insufficient_credits: Literal["fail", "partial"] = "fail"
    force: bool = False
    timeout: float | None = None
    storage_options: dict[str, Any] | None = None
    allow_empty: bool = False  # an empty source is an error unless this is set
    manifest: str | None = None  # where the manifest lives; default: _vance_manifest.json in destination
    fresh: bool = False  # archive an existing manifest and start the batch afresh
    lock_timeout: float = 0.0  # seconds to wait for another run's lease on the batch; 0 = fail at once
    owner: str | None = None  # a stable id of this run (say, an Airflow run id): it may re-enter its lease
    lease_scope: str | None = None  # runs with disjoint inputs by construction (a partition): own lease
    cache: str | None = None  # a result cache (fsspec URL): results already paid for are copied, not paid
    cache_storage_options: dict[str, Any] | None = None  # default: storage_options
    cache_optional: bool = False  # a cache that cannot be used is a warning, not a refusal
    overwrite: bool = False  # write over files already in the destination that are not this batch's

    def __repr__(self) -> str:  # never a credential: storage options and URLs are redacted
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _REDACTED_FIELDS:
                value = redact_options(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __post_init__(self) -> None:
        budget = self.credit_budget
        if budget is not None and (
            isinstance(budget, bool)
            or not isinstance(budget, (int, float))
            or not math.isfinite(budget)
            or budget < 0
        ):
            raise InvalidConfigError(
                f"credit_budget must be a number of credits of 0 or more, got {budget!r}",
                hint="give a finite number such as 50, or leave it unset for no budget",
            )
        if (
            isinstance(self.max_concurrency, bool)
            or not isinstance(self.max_concurrency, int)
            or (self.max_concurrency < 1)
        ):
            raise InvalidConfigError(
                f"max_concurrency must be a whole number of 1 or more, got {self.max_concurrency!r}"
            )
        for name in ("poll_interval", "max_poll_interval"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise InvalidConfigError(
                    f"{name} must be a number of seconds over 0, got {value!r}",
                    hint="for example 2 (seconds); the service advises about 2 s for images, 5-10 s for video",
                )
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not self.timeout > 0
        ):
            raise InvalidConfigError(f"timeout must be a number of seconds over 0, got {self.timeout!r}")
        if not isinstance(self.lock_timeout, (int, float)) or not self.lock_timeout >= 0:
            raise InvalidConfigError(f"lock_timeout must be 0 or more seconds, got {self.lock_timeout!r}")


@dataclass
class ItemResult:
    source: str
    state: str
    output: str | None = None
    job_id: str | None = None
    credits: float = 0.0
    error: str | None = None
    error_code: str | None = None
    cached: bool = False  # served from the result cache, for 0 credits


@dataclass
class BatchResult:
    items: list[ItemResult]
    credits_spent: float
    elapsed: float
    manifest: str
    stopped: str | None = None  # why submission stopped early, if it did
    requests: dict[str, int] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (url, reason): listed, not taken
    credits_saved: float = 0.0  # what the results served from the cache cost when first paid for
    # Results this run collected that an earlier run had (or may have) paid for already: a job it
    # took over whose download had started (web API) or that had ended (Open API) before this run
    # looked at it. Not in ``credits_spent``: the account was not charged again.
    credits_taken_over: float = 0.0

    def count(self, state: str) -> int:
        return sum(1 for i in self.items if i.state == state)

    @property
    def done(self) -> int:
        return self.count(ItemState.DONE)

    @property
    def failed(self) -> int:
        return self.count(ItemState.FAILED)

    @property
    def skipped(self) -> int:
        return self.count(ItemState.SKIPPED)

    @property
    def outputs(self) -> list[str]:
        return [i.output for i in self.items if i.state == ItemState.DONE and i.output]

    def summary(self, max_outputs: int = 50) -> dict[str, Any]:
        """Small plain data for XCom or metadata (never big lists, never tokens)."""
        failures = [(i.source, i.error) for i in self.items if i.state == ItemState.FAILED]
        return {
            "total": len(self.items),
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "credits_spent": round(self.credits_spent, 3),
            "cached": sum(1 for i in self.items if i.cached),
            "credits_saved": round(self.credits_saved, 3),
            "credits_taken_over": round(self.credits_taken_over, 3),
            "elapsed_s": round(self.elapsed, 2),
            "manifest": self.manifest,
            "stopped": self.stopped,
            "outputs": self.outputs[:max_outputs],
            "failures": dict(failures[:max_outputs]),
            "ignored": dict(self.ignored[:max_outputs]),
        }

    def raise_for_failures(self, policy: FailurePolicy = "fail") -> BatchResult:
        if policy != "continue" and self.failed:
            first = next(i for i in self.items if i.state == ItemState.FAILED)
            raise BatchFailedError(
                f"{self.failed} of {len(self.items)} item(s) failed; first: {first.source}: {first.error}",
                result=self,
            )
        return self


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    credits_spent: float = 0.0
    last: ItemResult | None = None
