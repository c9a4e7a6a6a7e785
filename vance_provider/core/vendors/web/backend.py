"""VanceAI web API v1: form-encoded ``api_token``; upload -> transform -> progress -> download.

Every call is a POST with the token in the form body, so it never appears in a
URL. Errors arrive as HTTP 200 with a non-200 ``code`` in the JSON body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import httpx

from ...api.errors import (
    APIError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    VanceError,
)
from ...api.models import WEB_STATUS, Balance, Job, JobStatus, UsageRecord
from ...media import ext_from_response
from ..base import Backend, Submission
from .capabilities import CAPABILITIES

if TYPE_CHECKING:
    from ...tools import ToolCall

log = logging.getLogger("vance_provider.core.backends.web_api")

WEB_ERRORS: dict[int, tuple[type[APIError], str]] = {
    10001: (InvalidRequestError, "illegal parameter"),
    10010: (ServerError, "internal error, retry later"),
    10011: (NotFoundError, "the file or result does not exist"),
    10012: (InvalidRequestError, "resolution or file size exceeds the limits"),
    10013: (InvalidRequestError, "the jconfig could not be parsed"),
    10014: (ServerError, "the job failed and exited for an unexpected reason"),
    30001: (AuthenticationError, "invalid API token"),
    30004: (InsufficientCreditsError, "insufficient credits"),
}


def _post_refused(exc: APIError) -> bool:
    """``point`` is documented as GET only: a service that holds to it refuses a POST with HTTP
    405, or, as this API reports errors, with HTTP 200 and code 10001 (an illegal parameter, or
    the token "missing" because it read only the query string)."""
    if exc.status_code == 405:
        return True
    if exc.code == 10001:
        return True
    return isinstance(exc, AuthenticationError) and "missing" in exc.message


def _num(value: Any) -> float:
    return float(value) if value not in (None, "") else 0.0


class WebApiBackend(Backend):
    api = "web"
    capabilities = CAPABILITIES
    default_base_url = "https://api-service.vanceai.com/web_api/v1"

    expect = {
        "upload": (dict, ("data",)),
        "transform": (dict, ("data",)),
        "progress": (dict, ("data",)),
        "point": (dict, ("data",)),
        "points/record": (dict, ("data",)),
    }

    def _form(self, **fields: Any) -> dict[str, Any]:
        return {"api_token": self.token.reveal(), **{k: v for k, v in fields.items() if v is not None}}

    def map_error(self, name: str, response: httpx.Response) -> VanceError | None:
        status = response.status_code
        if status >= 400:  # the web API's own errors come as HTTP 200 with a code (below)
            cls = RateLimitedError if status == 429 else ServerError if status >= 500 else APIError
            what = "rate limited" if status == 429 else f"HTTP {status}"
            return cls(
                f"web API {name}: {what}",
                code=status,
                status_code=status,
                retry_after=self.retry_after(response),
            )
        # Every answer but a result file is JSON, errors included (HTTP 200 with a code), whatever
        # its Content-Type says: a body that is not JSON is a protocol error.
        try:
            body = self.parse_json(name, response)
        except ProtocolError as exc:
            return exc
        try:
            code = int(body.get("code", 200))
        except (TypeError, ValueError):
            return self.protocol_error(name, response, "the answer's code is not a number")
        if code == 200:
            return self.check_answer(name, response)
        msg = body.get("msg")
        if isinstance(msg, dict):  # field -> messages
            text = "; ".join(
                f"{k}: {' '.join(map(str, v if isinstance(v, list) else [v]))}" for k, v in msg.items()
            )
        else:
            text = str(msg or "")
        cls, meaning = WEB_ERRORS.get(code, (APIError, "unexpected error"))
        if code in (10001, 30001) and isinstance(msg, dict) and "api_token" in msg:
            cls, meaning = AuthenticationError, "the API token is missing"
        elif code == 10001 and name in ("progress", "download") and not isinstance(msg, dict):
            # trans_id is their only parameter: "Illegal parameter" means no such job
            cls, meaning = NotFoundError, "no such job (unknown trans_id)"
        hint = {
            AuthenticationError: "check the API token of the connection",
            InsufficientCreditsError: "top up credits or lower the batch",
        }.get(cls)
        return cls(
            f"web API {name}: {meaning} (code {code}: {self.clean(text)})",
            code=code,
            status_code=response.status_code,
            hint=hint,
            retry_after=self.retry_after(response),
        )

    async def _post(self, name: str, path: str, need: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
        url = f"{self.base_url}/{path}"
        response = await self.call(name, lambda: self.http.post(url, data=self._form(**fields)))
        return self._data(name, response, need)

    def _data(self, name: str, response: httpx.Response, need: tuple[str, ...] = ()) -> dict[str, Any]:
        """The ``data`` of a successful answer, holding the fields ``need`` names."""
        data = self.parse_json(name, response).get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.protocol_error(
                name, response, f"expected an object in 'data', got {type(data).__name__}"
            )
        for key in need:
            if data.get(key) in (None, ""):
                raise self.protocol_error(name, response, f"the answer has no {key!r}")
        return data

    async def stage(
        self, source: str, size: int, call: ToolCall, storage_options: dict[str, Any] | None = None
    ) -> str | None:
        """Upload the file; returns its ``uid`` (no job exists yet)."""
        name = source.rsplit("/", 1)[-1]
        url = f"{self.base_url}/upload"

        async def send_upload() -> httpx.Response:
            async with self.open_source(source, storage_options, size) as fh:  # a big one is streamed
                return await self.post_file(url, self._form(job="ai"), {"file": (name, fh)})

        return str(self._data("upload", await self.call("upload", send_upload), ("uid",))["uid"])

    async def create(self, submission: Submission) -> Job:
        """Upload (unless ``staged`` holds the uid) then transform. The web API has no idempotency
        keys, but it charges only on download, so a transform repeated after a lost answer costs nothing."""
        uid = submission.staged or await self.stage(
            submission.source, submission.size, submission.call, submission.storage_options
        )
        data = await self._post(
            "transform", "transform", ("trans_id",), uid=uid, jconfig=json.dumps(submission.call.jconfig)
        )
        return self._job(data["trans_id"], data, submission.call.tool)

    def _job(self, trans_id: str, data: dict[str, Any], tool: str = "") -> Job:
        raw = str(data.get("status", "waiting"))
        status = WEB_STATUS.get(raw, JobStatus.PROCESSING)
        size = data.get("filesize")
        return Job(
            id=trans_id,
            api="web",
            tool=tool,
            status=status,
            raw_status=raw,
            error_code=10014 if status is JobStatus.FAILED else None,
            error_message=str(data.get("content") or "the job failed (fatal)")
            if status is JobStatus.FAILED
            else None,
            size=int(size) if size not in (None, "") else None,
            raw=data,
        )

    async def get_job(self, job_id: str) -> Job:
        await self.pace_poll(job_id)
        url = f"{self.base_url}/progress"
        response = await self.call("progress", lambda: self.http.post(url, data=self._form(trans_id=job_id)))
        job = self._job(job_id, self._data("progress", response))
        self.note_poll(job, response)
        return job

    async def download(self, job: Job, dest: str, storage_options: dict[str, Any] | None = None) -> str:
        if job.size is None:  # e.g. transform answered "finish" at once: progress tells the size to verify
            job = await self.get_job(job.id)
        url = f"{self.base_url}/download"
        return await self.stream_to(
            "download",
            lambda: self.http.stream("POST", url, data=self._form(trans_id=job.id)),
            dest,
            job.size,
            ext_from_response,
            storage_options,
        )

    async def cancel(self, job_id: str) -> Job:
        raise InvalidRequestError("the web API v1 cannot cancel a job; it is not charged unless downloaded")

    async def delete(self, job_id: str) -> None:
        raise InvalidRequestError("the web API v1 cannot delete a job")

    async def balance(self) -> Balance:
        try:
            data = await self._post("point", "point")
        except APIError as exc:
            if not _post_refused(exc):
                raise
            # Documented as GET only: the token must go in the query string here. The redacting
            # log filter keeps it (in every encoding) out of httpx/httpcore logs; nothing else
            # records this URL.
            log.debug("web API point: POST refused (%s); asking by GET as documented", exc.code)
            url = f"{self.base_url}/point"
            response = await self.call("point", lambda: self.http.get(url, params=self._form()))
            data = self._data("point", response)
        total, used = _num(data.get("max_num")), _num(data.get("used_num"))
        return Balance(available=round(total - used, 3), used=used, total=total)

    async def usage(self, limit: int = 100, concurrency: int = 8) -> list[UsageRecord]:
        """Every page of ``points/record`` (newest first, as the service gives them). Once the
        first page says how many there are, the rest are fetched a few at a time (each call
        still passes the client's rate gate)."""
        first = await self._post("points/record", "points/record", page=1, limit=limit)
        gate = asyncio.Semaphore(concurrency)

        async def page(n: int) -> dict[str, Any]:
            async with gate:
                return await self._post("points/record", "points/record", page=n, limit=limit)

        rest = await asyncio.gather(*(page(n) for n in range(2, int(first.get("last_page") or 1) + 1)))
        return [
            UsageRecord(
                timestamp=str(row.get("created_at")),
                tool=str(row.get("job")),
                kind=str(row.get("point_type")),
                credits=_num(row.get("point")),
                balance=_num(row.get("balance")),
                source=row.get("info"),
                job_id=None,
                api="web",
            )
            for data in (first, *rest)
            for row in data.get("datas") or []
        ]
