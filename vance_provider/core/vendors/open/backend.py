"""VanceAI Open API v1: bearer ``sk_live_`` keys, ``/jobs``, two-phase video upload, ``/credits``.

The key goes only in the ``Authorization`` header of API calls, never to the
signed result URL or the presigned upload URL (both on another host).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from ...api.errors import (
    APIError,
    AuthenticationError,
    ConcurrencyLimitedError,
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ResultNotReadyError,
    ServerError,
    UploadExpiredError,
    VanceError,
)
from ...api.models import Balance, Job, JobStatus
from ...media import ext_from_response
from ..base import Backend, Submission
from .capabilities import CAPABILITIES

if TYPE_CHECKING:
    from ...tools import ToolCall

BY_CODE: dict[str, type[APIError]] = {
    "invalid_api_key": AuthenticationError,
    "unauthorized": AuthenticationError,
    "geo_restricted": AuthenticationError,
    "insufficient_credits": InsufficientCreditsError,
    "invalid_parameter": InvalidRequestError,
    "unsupported_tool": InvalidRequestError,
    "file_too_large": InvalidRequestError,
    "unsupported_format": InvalidRequestError,
    "job_not_found": NotFoundError,
    "upload_not_found": NotFoundError,
    "not_cancelable": ConflictError,
    "idempotency_conflict": ConflictError,
    "upload_already_consumed": ConflictError,
    "upload_expired": UploadExpiredError,
    "result_not_ready": ResultNotReadyError,
    "rate_limited": RateLimitedError,
    "concurrency_limit_exceeded": ConcurrencyLimitedError,
    "service_unavailable": ServerError,
    "internal_error": ServerError,
}
# The content type of a video upload, from its extension (as the service infers it). The same
# value goes in ``POST /uploads`` and in the ``PUT``: a presigned URL may sign it.
VIDEO_TYPES = {
    "mp4": "video/mp4",
    "m4v": "video/x-m4v",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
}
STATUSES = {s.value for s in JobStatus}
HINTS = {
    AuthenticationError: "check the sk_live_ key of the connection; revoked keys stay invalid",
    InsufficientCreditsError: "top up credits or lower the batch",
    ConcurrencyLimitedError: "lower max_concurrency or wait for jobs in flight",
}
#: The hint of a refused token that is not an Open API key at all (say, a web API token).
NOT_A_KEY_HINT = (
    "this token is not an Open API key (those start with sk_live_); a web API token needs "
    "api='web' or api='auto'"
)


class OpenApiBackend(Backend):
    api = "open"
    capabilities = CAPABILITIES
    default_base_url = "https://cloud-vanceai.vanceai.com/api/v1"
    token_prefix = "sk_live_"

    expect = {
        "create_job": (dict, ("job_id",)),
        "get_job": (dict, ("job_id",)),
        "credits": (dict, ("balance",)),
        "create_upload": (dict, ("upload_id", "put_url")),
        "cancel": (dict, ()),
        "delete": (dict, ()),
    }

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.reveal()}"}

    def map_error(self, name: str, response: httpx.Response) -> VanceError | None:
        status = response.status_code
        if status in (200, 201, 302) or (status == 202 and name != "result" and name != "create_job"):
            return self.check_answer(name, response)
        err: dict[str, Any] = {}
        try:
            body = response.json()
            err = body.get("error") or {} if isinstance(body, dict) else {}
        except ValueError:
            err = _storage_error(response)  # the storage URLs answer in S3's XML shape
        if not isinstance(err, dict):
            err = {}
        code = str(err.get("code") or "")
        if status == 202 and code != "result_not_ready":
            return self.check_answer(name, response)  # 202 Accepted on job creation
        cls = BY_CODE.get(code) or (
            ServerError
            if status >= 500
            else RateLimitedError
            if status == 429
            else AuthenticationError
            if status == 401
            else APIError
        )
        message = self.clean(err.get("message") or f"HTTP {status}")
        return cls(
            f"Open API {name}: {message} ({code or status})",
            code=code or status,
            status_code=status,
            retry_after=self.retry_after(response),
            hint=NOT_A_KEY_HINT
            if cls is AuthenticationError and not self.token.reveal().startswith(self.token_prefix or "")
            else HINTS.get(cls),
        )

    def check_answer(self, name: str, response: httpx.Response) -> ProtocolError | None:
        error = super().check_answer(name, response)
        if error is None and name in ("create_job", "get_job"):
            status = self.parse_json(name, response).get("status", "queued")
            if status not in STATUSES:
                return self.protocol_error(name, response, f"unknown job status {str(status)[:20]!r}")
        return error

    async def _json(self, name: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(name, method, path, **kwargs)
        return self.parse_json(name, response)

    async def _request(self, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        return await self.call(name, lambda: self.http.request(method, url, headers=self._auth, **kwargs))

    def _job(self, data: dict[str, Any]) -> Job:
        result = data.get("result") or {}
        error = data.get("error") or {}
        return Job(
            id=data["job_id"],
            api="open",
            tool=str(data.get("tool") or ""),
            status=JobStatus(data.get("status", "queued")),
            raw_status=str(data.get("status")),
            media=data.get("media") or "image",
            phase=data.get("phase"),
            progress=data.get("progress"),
            error_code=error.get("code"),
            error_message=error.get("message"),
            width=result.get("width"),
            height=result.get("height"),
            size=result.get("size"),
            duration=result.get("duration"),
            codec=result.get("codec"),
            credits_estimated=data.get("credits_estimated"),
            credits_charged=data.get("credits_charged"),
            length=job_length(data.get("created_at"), data.get("finished_at")),
            raw={k: v for k, v in data.items() if k != "result_url"},
            result_url=data.get("result_url") if isinstance(data.get("result_url"), str) else None,
        )

    async def create(self, submission: Submission) -> Job:
        source, call, key = submission.source, submission.call, submission.idempotency_key
        storage_options = submission.storage_options
        headers = {**self._auth, **({"Idempotency-Key": key} if key else {})}
        url = f"{self.base_url}/jobs"
        if call.media == "video":
            staged = submission.staged
            upload_id = staged or await self._upload_video(source, submission.size, storage_options)
            body = {"upload_id": upload_id, "tool": call.open_tool, "config": call.open_config or {}}
            response = await self.call("create_job", lambda: self.http.post(url, json=body, headers=headers))
            return self._job(self.parse_json("create_job", response))
        name = source.rsplit("/", 1)[-1]
        form = {
            "tool": call.open_tool or "",
            "config": json.dumps(call.open_config or {}),
            "output_format": call.output_format or "jpg",
        }

        async def send() -> httpx.Response:
            async with self.open_source(source, storage_options, submission.size) as fh:
                return await self.post_file(url, form, {"image": (name, fh)}, headers)

        return self._job(self.parse_json("create_job", await self.call("create_job", send)))

    async def stage(
        self, source: str, size: int, call: ToolCall, storage_options: dict[str, Any] | None = None
    ) -> str | None:
        """A video goes up before its job exists (two-phase upload); an image rides in the create."""
        return await self._upload_video(source, size, storage_options) if call.media == "video" else None

    async def _upload_video(
        self, source: str, size: int, storage_options: dict[str, Any] | None = None
    ) -> str:
        """POST /uploads, then one raw PUT of the bytes to ``put_url`` (no auth header).

        Both carry the same content type, the one the service infers from the extension: a
        presigned URL that signs it refuses a ``PUT`` with another (S3 and R2 can sign it)."""
        name = source.rsplit("/", 1)[-1]
        ctype = video_type(name)
        ticket = await self._json(
            "create_upload",
            "POST",
            "/uploads",
            json={"file_name": name, "file_size": size, "content_type": ctype},
        )
        if size > int(ticket.get("max_bytes") or size):
            raise InvalidRequestError(
                f"{name}: {size} bytes is over the upload limit of {ticket['max_bytes']}"
            )
        put_url = ticket["put_url"]
        await self.call(
            "put_upload",
            lambda: self.http.put(
                put_url,
                content=self.source_chunks(source, storage_options),
                headers={"Content-Length": str(size), "Content-Type": ctype},
            ),
            gated=False,  # storage, not the API: no rate limit
        )
        return str(ticket["upload_id"])

    async def get_job(self, job_id: str) -> Job:
        await self.pace_poll(job_id)
        return await self._fetch_job(job_id)

    async def _fetch_job(self, job_id: str) -> Job:
        response = await self._request("get_job", "GET", f"/jobs/{job_id}")
        job = self._job(self.parse_json("get_job", response))
        self.note_poll(job, response)
        return job

    async def result_location(self, job_id: str) -> str:
        """The freshly signed result URL (302); 202 ``result_not_ready`` is retried."""
        url = f"{self.base_url}/jobs/{job_id}/result"
        response = await self.call("result", lambda: self.http.get(url, headers=self._auth))
        location = response.headers.get("location")
        if response.status_code != 302 or not location:
            raise ServerError(f"Open API result: expected a redirect, got HTTP {response.status_code}")
        return location

    async def download(self, job: Job, dest: str, storage_options: dict[str, Any] | None = None) -> str:
        if job.size is None:  # the size verifies the download; a job built by hand may lack it
            job = await self.get_job(job.id)
        # The terminal answer's signed link saves a /result round trip; when it has expired (403),
        # /result signs a fresh one.
        locations = [job.result_url] if job.result_url else []
        for attempt in range(2):
            location = locations.pop() if locations else await self.result_location(job.id)
            try:
                # Follow the redirect ourselves, WITHOUT the Authorization header (another host).
                return await self.stream_to(
                    "result_file",
                    functools.partial(self.http.stream, "GET", location),
                    dest,
                    job.size,
                    lambda r: ext_from_response(r, "mp4" if job.media == "video" else "jpg"),
                    storage_options,
                    gated=False,  # the signed URL is storage, not the API: no rate limit
                )
            except APIError as exc:
                if exc.status_code != 403 or attempt:
                    raise  # 403: the signed URL expired meanwhile; ask for a fresh one once
        raise AssertionError("unreachable")

    async def cancel(self, job_id: str) -> Job:
        await self._json("cancel", "POST", f"/jobs/{job_id}/cancel")
        return await self._fetch_job(job_id)  # not paced: the caller wants to see the cancel

    async def delete(self, job_id: str) -> None:
        await self._json("delete", "DELETE", f"/jobs/{job_id}")

    async def balance(self) -> Balance:
        data = await self._json("credits", "GET", "/credits")
        return Balance(
            available=float(data["balance"]),
            used=float(data.get("used", 0)),
            frozen=float(data.get("frozen", 0)),
        )


def video_type(file_name: str) -> str:
    """The MIME type of a video file by its extension (``video/mp4`` for .mp4)."""
    ext = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    return VIDEO_TYPES.get(ext, "application/octet-stream")


_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{0,200})</\1>")


def _storage_error(response: httpx.Response) -> dict[str, str]:
    """``{"code", "message"}`` from an S3-style XML error body (``<Error><Code>...``), else ``{}``."""
    if "xml" not in response.headers.get("content-type", ""):
        return {}
    fields = dict(_XML_FIELD.findall(response.text[:4096]))
    return {"code": fields.get("Code", ""), "message": fields.get("Message", "")} if fields else {}


def job_length(created_at: Any, finished_at: Any) -> float | None:
    """Seconds from ``created_at`` to ``finished_at`` (ISO 8601, the service's clock), when both
    are there and precise enough to time a job by: with fractions of a second, or at least 10 s
    apart (whole seconds then err by 10 % at most)."""
    if not isinstance(created_at, str) or not isinstance(finished_at, str):
        return None
    try:
        start = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        end = datetime.fromisoformat(finished_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    seconds = (end - start).total_seconds()
    precise = "." in created_at and "." in finished_at
    return seconds if seconds >= 0 and (precise or seconds >= 10) else None
