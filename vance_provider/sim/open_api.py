"""The VanceAI Open API v1 (``/api/v1``): bearer keys, jobs, uploads, credits.

Also serves the two "storage" URLs that the real service hands out on another
host: the signed result URL and the presigned upload ``PUT`` URL. Like S3, they
reject a request that also carries an ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from . import processing
from .common import CONTENT_TYPES, garble, record_of, result_response, state_of, told_iso
from .state import AccountState, Idem, Job, SimState, Upload

IMAGE_TOOLS = {
    "upscale",
    "sharpen",
    "denoise",
    "remove_bg",
    "restore",
    "cartoonize",
    "passport_photo",
    "custom",
}
VIDEO_TOOLS = {"video_upscale", "video_hdr", "video_face_enhance"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
# The content type of an upload, inferred from the file name's extension when not given.
VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/x-m4v",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
}
ERROR_TYPES = {
    "invalid_api_key": "auth",
    "unauthorized": "auth",
    "insufficient_credits": "billing",
    "invalid_parameter": "validation",
    "unsupported_tool": "validation",
    "geo_restricted": "auth",
    "job_not_found": "validation",
    "file_too_large": "validation",
    "unsupported_format": "validation",
    "not_cancelable": "validation",
    "idempotency_conflict": "validation",
    "upload_not_found": "validation",
    "upload_already_consumed": "validation",
    "upload_expired": "validation",
    "result_not_ready": "processing",
    "rate_limited": "rate_limit",
    "concurrency_limit_exceeded": "rate_limit",
    "service_unavailable": "server",
    "internal_error": "server",
    "processing_failed": "processing",
    "processing_timeout": "processing",
    "ssrf_blocked": "validation",
    "upload_incomplete": "validation",
    "resolution_limit_exceeded": "validation",
}
MESSAGES = {
    "invalid_api_key": "The API key provided is invalid or has been disabled.",
    "insufficient_credits": "Your account does not have enough credits for this operation.",
    "job_not_found": "No such job under your account.",
    "result_not_ready": "The result is still syncing; retry shortly.",
    "rate_limited": "Per-key request rate exceeded.",
    "concurrency_limit_exceeded": "Too many in-flight jobs for the account.",
}


def error(
    status: int, code: str, message: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "error": {
            "code": code,
            "message": message or MESSAGES.get(code, code.replace("_", " ")),
            "type": ERROR_TYPES.get(code, "server"),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def storage_error(status: int, code: str, message: str) -> Response:
    """An error of the storage URLs, in the shape S3 and R2 give it (XML)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


def authenticate(request: Request) -> AccountState | JSONResponse:
    sim = state_of(request)
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        return error(401, "invalid_api_key")
    if scheme.lower() != "bearer" or not key.startswith("sk_live_"):
        return error(401, "unauthorized", "Authentication failed.")
    acc = sim.account_for_open_key(key.strip())
    if acc is None:
        return error(401, "invalid_api_key")
    record_of(request).account = acc.spec.name
    if sim.config.rate_limit:
        allowed, limits = sim.take_rate(key)
        if not allowed:
            return error(429, "rate_limited", headers=limits)
        if sim.config.rate_headers == "always":  # every answer carries the window (see SimMiddleware)
            request.scope["sim_ratelimit"] = limits
    return acc


def keyed(
    handler: Callable[[Request, AccountState], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that takes the key: ``handler`` gets the account once the key is checked."""

    async def endpoint(request: Request) -> Response:
        acc = authenticate(request)
        if isinstance(acc, JSONResponse):
            return acc
        return await handler(request, acc)

    return endpoint


def own_job(
    handler: Callable[[Request, Job], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint about one job (``{job_id}``) of the key's account: a 404 for any other."""

    @keyed
    async def endpoint(request: Request, acc: AccountState) -> Response:
        job = _own_job(state_of(request), acc, request.path_params["job_id"])
        if job is None:
            return error(404, "job_not_found")
        record_of(request).job = job.id
        return await handler(request, job)

    return endpoint


# --- tools and costs ------------------------------------------------------------------
def check_config(tool: str, config: dict[str, Any]) -> str | None:
    def boolean(key: str) -> str | None:
        return None if key not in config or isinstance(config[key], bool) else f"{key} must be a boolean"

    if tool == "upscale" and config.get("scale", 2) not in (2, 4, 8):
        return "upscale.scale must be 2, 4, or 8"
    if tool == "custom" and not str(config.get("prompt", "")).strip():
        return "custom requires a non-empty prompt"
    if tool == "video_upscale" and config.get("scale", 2) not in (2, 4):
        return "video_upscale.scale must be 2 or 4"
    if tool in {"video_hdr", "video_face_enhance"}:
        if config.get("quality", "high") not in ("high", "medium", "low"):
            return "quality must be high, medium or low"
        if config.get("codec", "h264") not in ("h264", "h265"):
            return "codec must be h264 or h265"
    if "fps" in config and not (isinstance(config["fps"], (int, float)) and 1 <= config["fps"] <= 120):
        return "fps must be a number from 1 to 120"
    return boolean("face_enhance")


def image_cost(tool: str, config: dict[str, Any]) -> float:
    return 2.0 if tool == "upscale" and config.get("scale") == 8 else 1.0


def video_cost(tool: str, config: dict[str, Any], width: int, height: int, duration: float) -> float:
    """Credits per second of video, more for bigger outputs; at least one credit."""
    rate = {"video_upscale": 0.5 * int(config.get("scale", 2)), "video_hdr": 0.5, "video_face_enhance": 0.8}[
        tool
    ]
    return max(1.0, round(rate * duration, 1))


def video_out_dims(tool: str, config: dict[str, Any], w: int, h: int) -> tuple[int, int]:
    s = int(config.get("scale", 2)) if tool == "video_upscale" else 1
    return w * s, h * s


def job_body(sim: SimState, job: Job, request: Request) -> dict[str, Any]:
    now = sim.clock.now()
    body: dict[str, Any] = {"job_id": job.id, "status": job.status}
    if job.status == "processing":
        phase, progress = job.phase or "processing", 0
        if job.media == "video" and job.started_at is not None and job.finish_at:
            frac = (now - job.started_at) / max(1e-9, job.finish_at - job.started_at)
            phase = "uploading" if frac < 0.15 else "syncing" if frac < 0.25 else "processing"
            progress = 0 if phase != "processing" else min(99, int((frac - 0.25) / 0.75 * 100))
        elif job.started_at is not None and job.finish_at:
            progress = min(99, int((now - job.started_at) / max(1e-9, job.finish_at - job.started_at) * 100))
        body["phase"], body["progress"] = phase, progress
    else:
        body["progress"] = 100 if job.status == "succeeded" else 0
    body.update(
        {
            "tool": job.tool,
            "media": job.media,
            "result_url": None,
            "result": None,
            "error": None,
            "credits_estimated": job.cost if job.media == "image" else job.config.get("_estimate", 0),
            "credits_charged": job.cost if job.status == "succeeded" else (job.reserved or 0),
            "created_at": told_iso(sim, job.created_at),
            "finished_at": told_iso(sim, job.finished_at),
        }
    )
    if job.status == "succeeded":
        body["result_url"] = signed_result_url(sim, job, request)
        body["result"] = job.result_info
    if job.status == "failed":
        body["error"] = {
            "code": job.error_code,
            "message": job.error_message,
            "type": ERROR_TYPES.get(job.error_code or "", "processing"),
        }
    return body


def public_config(job: Job) -> dict[str, Any]:
    return {k: v for k, v in (job.config or {}).items() if not k.startswith("_")}


def signed_result_url(sim: SimState, job: Job, request: Request) -> str:
    expires = int(sim.clock.now() + sim.config.signed_url_ttl)
    sign = sim.sign(f"result/{job.id}", expires)
    return str(request.url_for("result_file", job_id=job.id).include_query_params(expires=expires, sign=sign))


# --- routes ---------------------------------------------------------------------------
@keyed
async def create_job(request: Request, acc: AccountState) -> Response:
    sim = state_of(request)
    ctype = request.headers.get("content-type", "")
    fields: dict[str, Any]
    if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
        form = await request.form(max_part_size=sim.config.open_max_image_bytes + 1)
        fields = dict(form.multi_items())
        raw_config = fields.get("config") or "{}"
        try:
            config = json.loads(raw_config) if isinstance(raw_config, str) else None
        except ValueError:
            config = None
    else:
        try:
            fields = await request.json()
            assert isinstance(fields, dict)
        except Exception:
            return error(400, "invalid_parameter", "The body must be JSON or multipart form data.")
        config = fields.get("config") or {}
    if not isinstance(config, dict):
        return error(400, "invalid_parameter", "config must be a JSON object.")
    tool = fields.get("tool")
    if not tool:
        return error(400, "invalid_parameter", "tool is required.")
    if tool not in IMAGE_TOOLS | VIDEO_TOOLS:
        return error(400, "unsupported_tool", f"The tool {tool!r} does not exist or is not available in v1.")
    problem = check_config(tool, config)
    if problem:
        return error(400, "invalid_parameter", problem)
    media: Literal["image", "video"] = "video" if tool in VIDEO_TOOLS else "image"
    output_format = fields.get("output_format") or "jpg"
    if media == "image" and output_format not in ("jpg", "png", "webp"):
        return error(400, "invalid_parameter", "output_format must be jpg, png or webp.")
    file = fields.get("image") or fields.get("file")
    url = fields.get("image_url") or fields.get("source_url")
    upload_id = fields.get("upload_id")
    given = [x for x in (file, url, upload_id) if x]
    if len(given) != 1:
        return error(
            400, "invalid_parameter", "Give exactly one of image/file, upload_id, image_url/source_url."
        )
    if file is not None and not isinstance(file, UploadFile):
        return error(400, "invalid_parameter", "image must be a file part.")
    if file is not None and media == "video":
        return error(
            400, "invalid_parameter", "Direct video multipart upload is not supported; use upload_id."
        )
    if upload_id and media == "image":
        return error(400, "invalid_parameter", "upload_id is for video tools only.")

    # Idempotency: the same key replays the original job; another tool/config conflicts.
    idem_key = request.headers.get("idempotency-key")
    record_of(request).idempotency_key = idem_key
    fingerprint = json.dumps([tool, config, output_format], sort_keys=True)
    now = sim.clock.now()
    if idem_key:
        with sim.lock:
            prior = sim.idempotency.get((acc.spec.name, idem_key))
            if prior and prior.expires_at < now:
                prior = None
        if prior:
            if prior.fingerprint != fingerprint:
                return error(
                    409, "idempotency_conflict", "This Idempotency-Key was used with a different tool/config."
                )
            job = sim.jobs[prior.job_id]
            return JSONResponse(creation_body(sim, job), status_code=202)

    cfg = sim.config
    cap = cfg.max_concurrent_images if media == "image" else cfg.max_concurrent_videos
    with sim.lock:
        if sim.in_flight(acc.spec.name, media) >= cap:
            return error(429, "concurrency_limit_exceeded", headers={"Retry-After": sim.told_seconds(1)})
    job = Job(
        id=sim.new_id("job_", 12),
        api="open",
        account=acc.spec.name,
        tool=tool,
        config=dict(config),
        media=media,
        created_at=now,
        ready_at=now + cfg.queue_delay,
        output_format=output_format,
        idempotency_key=idem_key,
    )
    if media == "image":
        job.cost = image_cost(tool, config)
    if media == "video" and any(k in config for k in ("source_width", "source_height", "duration")):
        job.config["_estimate"] = video_cost(
            tool,
            config,
            int(config.get("source_width", 0)),
            int(config.get("source_height", 0)),
            float(config.get("duration", 0)),
        )
    # Pre-flight: the estimate (a video's, when the client gave its dimensions) against the balance.
    if acc.balance + 1e-9 < max(job.cost, job.config.get("_estimate", 0)):
        return error(402, "insufficient_credits")

    if isinstance(file, UploadFile):
        problem_resp = await _take_image(sim, job, file)
        if problem_resp:
            return problem_resp
    elif upload_id:
        problem_resp = _take_upload(sim, acc, job, str(upload_id))
        if problem_resp:
            return problem_resp
    else:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return error(400, "invalid_parameter", "image_url/source_url must be an http(s) URL.")
        job.source_pending = True
        job.source_name = Path(parts.path).name or "source"
    with sim.lock:
        if idem_key:  # re-check under the lock: two racing replays create one job
            prior = sim.idempotency.get((acc.spec.name, idem_key))
            if prior and prior.expires_at >= now:
                return JSONResponse(creation_body(sim, sim.jobs[prior.job_id]), status_code=202)
            sim.idempotency[(acc.spec.name, idem_key)] = Idem(fingerprint, job.id, now + cfg.idempotency_ttl)
        sim.add_job(job)
        record_of(request).created_job = job.id
    if job.source_pending:
        asyncio.get_running_loop().create_task(_fetch_source(sim, job, str(url)))
    return JSONResponse(creation_body(sim, job), status_code=202)


def creation_body(sim: SimState, job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status if job.status != "processing" else "queued",
        "tool": job.tool,
        "media": job.media,
        "credits_estimated": job.cost if job.media == "image" else job.config.get("_estimate", 0),
        "credits_charged": 0,
        "created_at": told_iso(sim, job.created_at),
    }


def _set_image_source(sim: SimState, job: Job, path: Path) -> None:
    cfg = sim.config
    with Image.open(path) as img:
        mp = img.width * img.height / 1e6
    job.processing_time = cfg.time_per_job + cfg.time_per_megapixel * mp
    job.source = path
    job.source_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()


def _set_video_source(sim: SimState, job: Job, path: Path) -> None:
    info = processing.probe_video(path)
    job.source = path
    job.cost = video_cost(job.tool, job.config, info.width, info.height, info.duration)
    job.out_dims = video_out_dims(job.tool, job.config, info.width, info.height)
    job.processing_time = sim.config.time_per_job + sim.config.time_per_video_second * info.duration


async def _take_image(sim: SimState, job: Job, file: UploadFile) -> Response | None:
    path = sim.workdir / f"in-{job.id}"
    size = 0
    with open(path, "wb") as out:
        while chunk := await file.read(1 << 20):
            size += len(chunk)
            if size > sim.config.open_max_image_bytes:
                path.unlink(missing_ok=True)
                return error(
                    413, "file_too_large", "Image direct upload is over 200 MB; use image_url instead."
                )
            out.write(chunk)
    head = path.read_bytes()[:16]
    if processing.image_format(head) is None:
        path.unlink(missing_ok=True)
        return error(415, "unsupported_format", "Direct upload must be JPG, PNG or WEBP.")
    try:
        _set_image_source(sim, job, path)
    except Exception:
        path.unlink(missing_ok=True)
        return error(415, "unsupported_format", "The uploaded image could not be decoded.")
    job.source_name = file.filename or "image"
    return None


def _take_upload(sim: SimState, acc: AccountState, job: Job, upload_id: str) -> Response | None:
    with sim.lock:
        up = sim.uploads.get(upload_id)
        if up is None or up.account != acc.spec.name:
            return error(
                404, "upload_not_found", "The upload_id does not exist or belongs to another account."
            )
        if up.consumed_by:
            return error(409, "upload_already_consumed", "The upload_id was already used by another job.")
        if sim.clock.now() > up.expires_at:
            return error(410, "upload_expired", "The upload_id expired; request a new one.")
        up.consumed_by = job.id
    job.source_name = up.file_name
    if not up.put_done:
        job.planned_failure = "upload_incomplete"
        return None
    try:
        _set_video_source(sim, job, up.path)
    except Exception:
        job.planned_failure = "unsupported_format"
    return None


def _blocked(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return True
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            return True
    return False


async def _fetch_source(sim: SimState, job: Job, url: str) -> None:
    """The service's worker fetches ``image_url`` / ``source_url`` (SSRF-protected)."""
    host = urlsplit(url).hostname or ""
    failure: str | None = None
    if not sim.config.allow_loopback_urls and _blocked(host):
        failure = "ssrf_blocked"
    else:
        path = sim.workdir / f"in-{job.id}"
        try:
            async with (
                httpx.AsyncClient(timeout=30, follow_redirects=False) as client,
                client.stream("GET", url) as resp,
            ):
                resp.raise_for_status()
                size = 0
                with open(path, "wb") as out:
                    async for chunk in resp.aiter_bytes(1 << 20):
                        size += len(chunk)
                        if size > sim.config.open_max_image_bytes:
                            failure = "file_too_large"
                            break
                        out.write(chunk)
            if failure is None:
                if job.media == "image":
                    if processing.image_format(path.read_bytes()[:16]) is None:
                        failure = "unsupported_format"
                    else:
                        _set_image_source(sim, job, path)
                else:
                    _set_video_source(sim, job, path)
        except Exception:
            failure = failure or "unsupported_format"
    with sim.lock:
        if failure:
            job.planned_failure = failure
        job.source_pending = False


@own_job
async def get_job(request: Request, job: Job) -> Response:
    sim = state_of(request)
    headers = dict(request.scope.get("sim_ratelimit") or {})
    if sim.config.poll_retry_after and job.status not in {"succeeded", "failed", "canceled"}:
        headers["Retry-After"] = sim.told_seconds(sim.config.poll_retry_after)  # a hint for the next poll
    return JSONResponse(job_body(sim, job, request), headers=headers or None)


def _own_job(sim: SimState, acc: AccountState, job_id: str) -> Job | None:
    with sim.lock:
        job = sim.jobs.get(job_id)
    if job is None or job.api != "open" or job.account != acc.spec.name or job.deleted:
        return None
    return job


@own_job
async def get_result(request: Request, job: Job) -> Response:
    sim = state_of(request)
    if job.status in {"failed", "canceled"}:
        return error(400, "invalid_parameter", f"The job is {job.status} and has no result.")
    ready_at = (job.finished_at or 0) + sim.config.result_sync_window
    if job.status != "succeeded" or sim.clock.now() < ready_at:
        return error(202, "result_not_ready", headers={"Retry-After": sim.told_seconds(1)})
    return RedirectResponse(signed_result_url(sim, job, request), status_code=302)


def presigned(
    kind: str, id_param: str, expires_param: str, signature_param: str
) -> Callable[[Callable[[Request, str], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """A storage URL of a ``kind``, like S3's presigned ones: it takes no Authorization header, a
    valid signature, and is not expired. The handler gets the id (the path's ``id_param``)."""

    def wrap(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            sim, name = state_of(request), request.path_params[id_param]
            if "authorization" in request.headers:
                return storage_error(400, "InvalidArgument", "Only one auth mechanism allowed")
            try:
                expires = int(request.query_params.get(expires_param, "0"))
            except ValueError:
                expires = 0
            if not sim.check_signature(
                f"{kind}/{name}", expires, request.query_params.get(signature_param, "")
            ):
                return storage_error(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)
            if sim.clock.now() > expires:
                return storage_error(403, "AccessDenied", "Request has expired")
            return await handler(request, name)

        return endpoint

    return wrap


SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)


@presigned("result", "job_id", "expires", "sign")
async def result_file(request: Request, job_id: str) -> Response:
    """The signed result URL ('another host'): no Authorization header allowed."""
    sim = state_of(request)
    record_of(request).job = job_id
    with sim.lock:
        job = sim.jobs.get(job_id)
    if job is None or job.result is None or job.deleted:
        return storage_error(404, "NoSuchKey", "The specified key does not exist.")
    ext = job.result.suffix.lstrip(".")
    return result_response(
        sim, job.result, CONTENT_TYPES.get(ext, "application/octet-stream"), f"{job.id}.{ext}"
    )


@own_job
async def cancel_job(request: Request, job: Job) -> Response:
    sim = state_of(request)
    with sim.lock:
        if job.status in {"succeeded", "failed", "canceled"}:
            return error(409, "not_cancelable", f"The job is already {job.status}.")
        sim.cancel(job)
    return JSONResponse({"job_id": job.id, "status": "canceled"})


@keyed
async def delete_job(request: Request, acc: AccountState) -> Response:
    sim = state_of(request)
    with sim.lock:
        job = sim.jobs.get(request.path_params["job_id"])
        if job is None or job.api != "open" or job.account != acc.spec.name:
            return error(404, "job_not_found")
        if not job.deleted:
            if job.status in {"queued", "processing"}:
                sim.cancel(job)
            job.deleted = True
            if job.result:
                job.result.unlink(missing_ok=True)
                job.result = None
    return JSONResponse({"job_id": job.id, "deleted": True})


@keyed
async def create_upload(request: Request, acc: AccountState) -> Response:
    sim = state_of(request)
    try:
        body = await request.json()
        assert isinstance(body, dict)
    except Exception:
        return error(400, "invalid_parameter", "The body must be a JSON object.")
    name = body.get("file_name")
    if not name or not isinstance(name, str):
        return error(400, "invalid_parameter", "file_name is required.")
    if Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
        return error(400, "invalid_parameter", "file_name must have a video extension (e.g. clip.mp4).")
    max_bytes = sim.config.open_max_upload_bytes
    size = body.get("file_size")
    if size is not None and (not isinstance(size, (int, float)) or size < 0):
        return error(400, "invalid_parameter", "file_size must be a number of bytes.")
    if size is not None and size > max_bytes:
        return error(
            413, "file_too_large", f"file_size is over the single-upload limit of {max_bytes} bytes."
        )
    upload_id = sim.new_id("upl_", 12)
    expires = sim.clock.now() + sim.config.upload_ttl
    with sim.lock:
        sim.uploads[upload_id] = Upload(
            upload_id,
            acc.spec.name,
            name,
            str(body.get("content_type") or VIDEO_TYPES[Path(name).suffix.lower()]),
            max_bytes,
            expires,
            sim.workdir / f"upload-{upload_id}",
        )
    sig = sim.sign(f"upload/{upload_id}", int(expires))
    put_url = request.url_for("put_upload", upload_id=upload_id).include_query_params(
        **{"X-Amz-Expires": int(expires), "X-Amz-Signature": sig}
    )
    return JSONResponse(
        {
            "upload_id": upload_id,
            "put_url": str(put_url),
            "expires_at": told_iso(sim, expires),
            "max_bytes": max_bytes,
        },
        status_code=201,
    )


@presigned("upload", "upload_id", "X-Amz-Expires", "X-Amz-Signature")
async def put_upload(request: Request, upload_id: str) -> Response:
    """The presigned PUT: raw bytes streamed to disk, no auth header, single object."""
    sim = state_of(request)
    with sim.lock:
        up = sim.uploads.get(upload_id)
    if up is None:
        return storage_error(403, "AccessDenied", "Request has expired")
    if up.consumed_by and up.put_done:
        return storage_error(403, "AccessDenied", "The upload was already consumed")
    sent_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if sim.config.presign_content_type and sent_type != up.content_type.lower():
        # The URL signs the content type (as S3/R2 presigned URLs can): another one, or none,
        # changes the string to sign.
        return storage_error(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)
    size, digest = 0, hashlib.md5()
    with open(up.path, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > up.max_bytes:
                out.close()
                up.path.unlink(missing_ok=True)
                return storage_error(
                    413, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
                )
            digest.update(chunk)
            out.write(chunk)
    with sim.lock:
        up.size, up.put_done = size, True
    return Response(status_code=200, headers={"ETag": f'"{digest.hexdigest()}"'})


@keyed
async def credits(request: Request, acc: AccountState) -> Response:
    return JSONResponse(
        {"balance": round(acc.balance, 3), "used": round(acc.used, 3), "frozen": round(acc.frozen, 3)},
        headers=request.scope.get("sim_ratelimit"),
    )


def garbling(endpoint: str, handler: Any) -> Any:
    """``handler``, under the 'garble' fault (see :class:`~vance_provider.sim.config.Faults`)."""

    async def route(request: Request) -> Response:
        return garble(state_of(request), endpoint, await handler(request))

    return route


routes = [
    Route("/api/v1/jobs", garbling("create_job", create_job), methods=["POST"]),
    Route("/api/v1/jobs/{job_id}", garbling("get_job", get_job), methods=["GET"]),
    Route("/api/v1/jobs/{job_id}", delete_job, methods=["DELETE"]),
    Route("/api/v1/jobs/{job_id}/result", get_result, methods=["GET"]),
    Route("/api/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/api/v1/uploads", garbling("upload", create_upload), methods=["POST"]),
    Route("/api/v1/credits", garbling("credits", credits), methods=["GET"]),
    Route("/storage/results/{job_id}", result_file, methods=["GET"], name="result_file"),
    Route("/storage/uploads/{upload_id}", put_upload, methods=["PUT"], name="put_upload"),
]
