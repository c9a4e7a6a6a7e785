"""The one job model over both VanceAI APIs, and the small records around it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

# The APIs (one list for every face) live in a module that imports nothing: the provider's
# metadata reads them without loading the engine.
from ...defaults import API_CHOICES as API_CHOICES
from ...defaults import API_NAMES as API_NAMES
from ...defaults import API_TITLES as API_TITLES
from ...defaults import ApiChoice as ApiChoice
from ...defaults import ApiName as ApiName

Media = Literal["image", "video"]


def credits_text(value: float) -> str:
    """A number of credits (or seconds) as a message shows it: exact to 9 decimals, without
    float noise or a trailing ``.0``: 2.9999999 stays 2.9999999 (``:g`` showed 3), 0.1 + 0.2 is 0.3."""
    number = round(float(value), 9)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


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
    # Seconds from its creation to its end on the service's own clock (``finished_at`` less
    # ``created_at``), when the service tells both precisely enough to time a job by.
    length: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # A signed link to the result (Open API, terminal answers): used once, never shown or kept.
    result_url: str | None = field(default=None, repr=False, compare=False)

    def to_xcom(self) -> dict[str, Any]:
        """Small plain data (no raw answer, no signed URLs)."""
        d = asdict(self)
        d.pop("raw")
        d.pop("result_url")
        d["status"] = self.status.value
        return d


@dataclass(frozen=True)
class Capabilities:
    """What an API can and cannot do; the engine branches on these, never on the API's name."""

    charges_on_download: bool = False  # the credits go at the first download (web), not at completion
    can_cancel: bool = False  # a job can be canceled, and its reserved credits come back
    idempotent_create: bool = False  # an Idempotency-Key makes a retried creation find the same job
    reserves_credits: bool = False  # a running job's credits are reserved: the balance already excludes them
    collectable_elsewhere: bool = True  # another process (a trigger, a resumed task) can fetch the results
    answers_on_submit: bool = False  # the result comes with the submission: nothing to poll
    has_usage_history: bool = False  # the service lists past charges (else only manifests know them)
    charges_credits: bool = True  # jobs cost credits (else a subscription: every job costs 0)
    image_formats: tuple[str, ...] = ("jpg", "png")  # the images it takes (by their content)
    max_image_bytes: int | None = None  # the largest image file it takes (None: no limit checked)
    max_image_pixels: int | None = None  # the most pixels an image may have (None: no limit)
    requests_per_job: int = 2  # the fewest rate-limited calls one job needs (create, one look, ...)
    max_video_bytes: int | None = None  # the largest video upload (None: no limit checked)


@dataclass(frozen=True)
class Balance:
    """Credits: ``available`` to spend now, ``used`` so far, ``frozen`` in reservations (Open API)."""

    available: float
    used: float
    frozen: float = 0.0
    total: float | None = None  # web API: max_num


@dataclass(frozen=True)
class UsageRecord:
    """One record of credit use: a row of the usage report (see ``core/reports/credits.py``)."""

    timestamp: str  # ISO 8601; UTC unless it carries an offset
    tool: str  # our name (upscale, denoise, ...), or the vendor's where we have none
    kind: str  # the vendor's record type - web: job | download; open: charge
    credits: float
    balance: float | None  # after this record, where the API says (web API)
    source: str | None  # the input (path or URL) as the batch was given it
    job_id: str | None
    api: ApiName
    vendor_tool: str | None = None  # web: the module (enlarge3); open: the API's tool name
    output: str | None = None  # where the result was stored
    batch: str | None = None  # the batch's manifest URL
    run: str | None = None  # the run that paid, where the engine recorded it
    saved: float = 0.0  # a result served from the cache: what it cost when it was paid for
