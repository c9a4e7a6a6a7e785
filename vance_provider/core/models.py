"""The one job model over both VanceAI APIs, and the small records around it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

ApiName = Literal["web", "open", "visioncraft"]
Media = Literal["image", "video"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


# The web API's statuses on the one model (``webhook`` means "running, result will be pushed").
WEB_STATUS = {
    "waiting": JobStatus.QUEUED,
    "busy": JobStatus.QUEUED,
    "process": JobStatus.PROCESSING,
    "webhook": JobStatus.PROCESSING,
    "finish": JobStatus.SUCCEEDED,
    "fatal": JobStatus.FAILED,
}


@dataclass(frozen=True)
class Job:
    """A job on either API. ``raw`` keeps the vendor's last answer for debugging."""

    id: str
    api: ApiName
    tool: str
    status: JobStatus
    raw_status: str
    media: Media = "image"
    phase: str | None = None
    progress: int | None = None
    error_code: str | int | None = None
    error_message: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None  # result bytes, when the service reports it
    duration: float | None = None
    codec: str | None = None
    credits_estimated: float | None = None
    credits_charged: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_xcom(self) -> dict[str, Any]:
        """Small plain data (no raw answer, no signed URLs)."""
        d = asdict(self)
        d.pop("raw")
        d["status"] = self.status.value
        return d


@dataclass(frozen=True)
class Balance:
    """Credits: ``available`` to spend now, ``used`` so far, ``frozen`` in reservations (Open API)."""

    available: float
    used: float
    frozen: float = 0.0
    total: float | None = None  # web API: max_num


@dataclass(frozen=True)
class UsageRecord:
    timestamp: str
    tool: str
    kind: str  # web: job | download; open: charge
    credits: float
    balance: float | None
    source: str | None
    job_id: str | None
    api: ApiName
