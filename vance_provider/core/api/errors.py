"""One error hierarchy for both VanceAI APIs (and for local checks).

Every error's message says what went wrong and what to do; none ever carries a
token. ``retryable`` tells the retry policy whether trying again can help.
"""

from __future__ import annotations

from typing import Any


class VanceError(Exception):
    """Root of every error this package raises."""

    retryable = False

    def __init__(self, message: str, *, code: str | int | None = None, hint: str | None = None) -> None:
        self.message, self.code, self.hint = message, code, hint
        super().__init__(message if not hint else f"{message} ({hint})")


class ConfigurationError(VanceError):
    """The connection or client settings are wrong (missing token, malformed base URL, ...)."""


class BudgetExceededError(VanceError):
    """The batch would spend more than its ``credit_budget``."""


class BatchFailedError(VanceError):
    """Some items of a batch failed and the failure policy says the run fails."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class WaitTimeoutError(VanceError):
    """Jobs did not finish before the deadline."""


class ManifestError(ConfigurationError):
    """A batch manifest cannot be used: malformed, or written for another batch. Nothing was spent."""


class ManifestMismatchError(ManifestError):
    """The manifest belongs to a batch with another source, destination, tool, config or API."""


class BatchLockedError(VanceError):
    """Another run holds the batch's lease (its manifest): running both would pay twice."""

    def __init__(
        self, message: str, *, holder: dict[str, Any] | None = None, hint: str | None = None
    ) -> None:
        self.holder = holder or {}
        super().__init__(message, hint=hint)


# --- local input checks (raised before anything is uploaded) ------------------------------
class InvalidInputError(VanceError):
    """An input or a config fails a local check; nothing was uploaded or charged."""

    def __init__(
        self, message: str, *, source: str | None = None, hint: str | None = None, code: str | None = None
    ) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message, hint=hint, code=code)


class UnsupportedFormatError(InvalidInputError):
    pass


class FileTooLargeError(InvalidInputError):
    pass


class TooManyPixelsError(InvalidInputError):
    pass


class UnreadableInputError(InvalidInputError):
    pass


class MediaMismatchError(InvalidInputError):
    """A video given to an image tool, or an image to a video tool."""


class InvalidConfigError(InvalidInputError):
    pass


class UnknownToolError(InvalidConfigError):
    pass


# --- answers from the service ------------------------------------------------------------
class APIError(VanceError):
    """The service answered with an error. ``code`` is the vendor's code (e.g. 10012, "rate_limited")."""

    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        status_code: int | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code, self.retry_after = status_code, retry_after
        super().__init__(message, code=code, hint=hint)


class AuthenticationError(APIError):
    pass


class InsufficientCreditsError(APIError):
    pass


class SubscriptionRequiredError(InsufficientCreditsError):
    """The model or tool is for paying subscribers only (VisionCraft premium)."""


class InvalidRequestError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class UploadExpiredError(APIError):
    pass


class RateLimitedError(APIError):
    retryable = True


class ConcurrencyLimitedError(APIError):
    retryable = True


class ServerError(APIError):
    retryable = True


class ResultNotReadyError(APIError):
    retryable = True


class ProtocolError(APIError):
    """An answer that is not what the API documents (HTML, truncated or mistyped JSON); retried like a 5xx.

    ``content_type`` and ``head`` (the first bytes, tokens redacted) say what came instead.
    """

    retryable = True

    def __init__(
        self, message: str, *, content_type: str | None = None, head: str | None = None, **kwargs: Any
    ) -> None:
        self.content_type, self.head = content_type, head
        super().__init__(message, **kwargs)


class ResultTooLargeError(APIError):
    """A result bigger than announced (the job's size, or ``DownloadOptions.max_bytes``): the
    download stops at once, before or while writing; nothing is kept and it is not retried."""


class TransportError(VanceError):
    """No (complete) answer: connection refused or dropped, timeout."""

    retryable = True


class TruncatedDownloadError(TransportError):
    """A download ended before its expected size; it is retried and never kept."""


class DownloadStalledError(TransportError):
    """A download slower than ``DownloadOptions.min_rate`` over a ``stall_window``; retried
    (within the download's deadline) and never kept."""


class DownloadTimeoutError(DownloadStalledError):
    """A download (every attempt together) ran past ``DownloadOptions.deadline``; not retried."""

    retryable = False


class JobFailedError(VanceError):
    """A job ended in ``failed`` (or ``canceled``) on the service side."""

    def __init__(self, job_id: str, code: str | int | None, message: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} failed: {message}", code=code)


#: Errors no retry can fix (the settings, an input, the credits, the token): the Airflow tasks
#: fail without retrying, the Dagster steps fail with retries off.
PERMANENT_ERRORS: tuple[type[VanceError], ...] = (
    ConfigurationError,
    InvalidInputError,
    BudgetExceededError,
    InsufficientCreditsError,
    AuthenticationError,
)
