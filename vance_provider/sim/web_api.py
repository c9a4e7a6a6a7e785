"""The VanceAI web API v1 (``/web_api/v1``) as the vendor documents describe it.

Quirks kept on purpose: errors come with HTTP 200 and a ``code`` in the body;
``msg`` is a string or a field -> messages object; many numbers are strings;
credits are charged on the first download of a result.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import ipaddress
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import processing
from .common import CONTENT_TYPES, form_or_query, garble, is_json_error, record_of, result_response, state_of
from .state import AccountState, Job, WebUpload

MODULES = {
    "enlarge3",
    "enlarge",
    "denoise",
    "sharpen3",
    "matting",
    "chainner",
    "real_esrgan",
    "crease_repair",
    "img2sr",
    "cartoonize",
    "img2anime",
    "animegan2",
    "sd_recolor",
    "deoldify2",
    "CodeFormer",
}
LAST_ONLY = {"enlarge3", "enlarge", "matting"}
STATUS = {
    "queued": "waiting",
    "processing": "process",
    "succeeded": "finish",
    "failed": "fatal",
    "canceled": "fatal",
}
MAX_OUTPUT_SIDE = 16384


def ok(data: Any) -> JSONResponse:
    return JSONResponse({"code": 200, "cscode": 200, "data": data, "ip": "127.0.0.1"})


def err(code: int, msg: str | dict[str, list[str]]) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg})


def required(field: str) -> JSONResponse:
    return err(10001, {field: [f"The {field.replace('_', ' ')} field is required."]})


def authenticate(request: Request, fields: dict[str, Any]) -> AccountState | JSONResponse:
    sim = state_of(request)
    token = fields.get("api_token")
    if not token:
        return err(sim.config.web_missing_token_code, {"api_token": ["The api token field is required."]})
    acc = sim.account_for_web_token(str(token))
    if acc is None:
        return err(30001, "Invalid API token")
    record_of(request).account = acc.spec.name
    if sim.config.rate_limit and sim.config.web_rate_limit:
        # Undocumented for this API: limited as a gateway would, HTTP 429 and the Open API's headers.
        allowed, limits = sim.take_rate(f"web:{token}")
        if not allowed:
            return JSONResponse({"code": 429, "msg": "Too Many Requests"}, status_code=429, headers=limits)
        if sim.config.rate_headers == "always":
            request.scope["sim_ratelimit"] = limits
    return acc


def keyed(
    handler: Callable[[Request, dict[str, Any], AccountState], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that takes the token: ``handler`` gets the request's fields (form or query) and
    the account, once the token is checked (else the error answers)."""

    async def endpoint(request: Request) -> Response:
        fields = await form_or_query(request)
        acc = authenticate(request, fields)
        if isinstance(acc, JSONResponse):
            return acc
        return await handler(request, fields, acc)

    return endpoint


def parse_jconfig(raw: str) -> dict[str, Any] | JSONResponse:
    """Both shapes: one step, or a workflow whose ``config`` is a list of steps."""
    try:
        jconfig = json.loads(raw)
    except (TypeError, ValueError):
        return err(10013, "jparam parse error")
    if not isinstance(jconfig, dict) or not isinstance(jconfig.get("config"), (dict, list)):
        return err(10013, "jparam parse error")
    steps = jconfig["config"] if isinstance(jconfig["config"], list) else [jconfig["config"]]
    if not steps:
        return err(10013, "jparam parse error")
    for i, step in enumerate(steps):
        if isinstance(jconfig["config"], list):
            if not isinstance(step, dict) or not isinstance(step.get("config"), dict):
                return err(10013, "jparam parse error")
            steps[i] = step = step["config"]
        if not isinstance(step, dict) or step.get("module") not in MODULES:
            return err(
                10001,
                f"Illegal Parameter: unknown module {step.get('module') if isinstance(step, dict) else step!r}",
            )
        problem = check_step(step)
        if problem:
            return err(10001, f"Illegal Parameter: {problem}")
        if step["module"] in LAST_ONLY and i != len(steps) - 1:
            return err(
                10001,
                "Illegal Parameter: Enlarge and Background remove can only be the last step of workflow",
            )
    return {"name": jconfig.get("name") or jconfig.get("job") or steps[0]["module"], "config": steps}


def _in(params: dict[str, Any], key: str, lo: float, hi: float) -> str | None:
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        return f"{key} must be a number from {lo} to {hi}"
    return None


def check_step(step: dict[str, Any]) -> str | None:
    """The documented rules the service enforces (a subset is enough for a simulator)."""
    m, p = step["module"], step.get("module_params") or {}
    if m == "enlarge3":
        scale, model = p.get("scale"), str(p.get("model_name", ""))
        if not isinstance(scale, int) or isinstance(scale, bool):
            return "scale must be an int"
        if "_2x_" in model and scale != 2:
            return "a 2x model takes scale 2"
        if "_4x_" in model and scale not in (4, 6, 8):
            return "a 4x model takes scale 4, 6 or 8"
        return _in(p, "suppress_noise", 0, 100) or _in(p, "remove_blur", 0, 100)
    if m in {"chainner", "real_esrgan", "enlarge"}:
        allowed = {
            "chainner": {"2x", "4x", "8x"},
            "real_esrgan": {"1x", "2x", "4x", "6x", "8x"},
            "enlarge": {"2x", "4x", "6x", "8x"},
        }[m]
        return None if p.get("scale", "2x") in allowed else f"scale must be one of {sorted(allowed)}"
    if m == "denoise":
        return _in(p, "remove_noise", 0, 100) or _in(p, "sharpen", 0, 100)
    if m == "sharpen3":
        return (
            _in(p, "remove_blur", 0, 1) or _in(p, "suppress_noise", 0, 1) or _in(p, "remove_artifacts", 0, 1)
        )
    if m == "img2sr":
        return _in(p, "strength", 0.8, 1.0)
    if m == "deoldify2":
        return _in(p, "render_factor", 10, 70)
    if m == "img2anime":
        return (
            _in(p, "style_strength", 0, 12)
            or _in(p, "control_mode", 0, 2)
            or _in(p, "denoising_strength", 0, 1)
        )
    return None


def output_size(w: int, h: int, steps: list[dict[str, Any]]) -> tuple[int, int]:
    for step in steps:
        if step["module"] in processing.SCALERS:
            s = processing.scale_of(step.get("module_params") or {})
            w, h = w * s, h * s
    return w, h


@keyed
async def upload(request: Request, fields: dict[str, Any], acc: AccountState) -> Response:
    sim = state_of(request)
    file = fields.get("file")
    if file is None or isinstance(file, str):
        return required("file")
    data = await file.read(sim.config.web_max_bytes + 1)
    if len(data) > sim.config.web_max_bytes:
        return err(10012, "Resolution or file size exceeds the limits.")
    fmt = processing.image_format(data)
    if fmt not in {"jpg", "png"}:
        return err(10001, "Illegal Parameter: only JPG and PNG are supported")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            w, h = img.size
    except Exception:
        return err(10001, "Illegal Parameter: the file is not a readable image")
    if w * h > sim.config.web_max_megapixels * 1_000_000:
        return err(10012, "Resolution or file size exceeds the limits.")
    if acc.balance <= 0:
        return err(30004, "Insufficient credits")
    uid = sim.new_id()
    path = sim.workdir / f"web-{uid}.{fmt}"
    path.write_bytes(data)
    name = file.filename or f"upload.{fmt}"
    with sim.lock:
        sim.web_uploads[uid] = WebUpload(uid, acc.spec.name, name, path, w, h, len(data))
    record_of(request).upload = uid
    return ok({"uid": uid, "name": f"'{name}'", "thumbnail": "", "w": w, "h": h, "filesize": len(data)})


def webhook_allowed(url: str, allow_http: bool) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme == "http" and allow_http and parts.hostname:
        try:
            return ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            return parts.hostname == "localhost"
    return False


@keyed
async def transform(request: Request, fields: dict[str, Any], acc: AccountState) -> Response:
    sim = state_of(request)
    for name in ("uid", "jconfig"):
        if not fields.get(name):
            return required(name)
    jconfig = parse_jconfig(str(fields["jconfig"]))
    if isinstance(jconfig, JSONResponse):
        return jconfig
    webhook = fields.get("webhook") or None
    if webhook and not webhook_allowed(str(webhook), sim.config.allow_http_webhooks):
        return err(10001, {"webhook": ["The webhook must be an https URL."]})
    with sim.lock:
        up = sim.web_uploads.get(str(fields["uid"]))
    if up is None or up.account != acc.spec.name:
        return err(10011, "File doesn't exist")
    ow, oh = output_size(up.width, up.height, jconfig["config"])
    if max(ow, oh) > MAX_OUTPUT_SIDE:
        return err(10012, "Job exceeds limitation")
    now = sim.clock.now()
    cfg = sim.config
    job = Job(
        id=sim.new_id(),
        api="web",
        account=acc.spec.name,
        tool=jconfig["name"],
        config=jconfig,
        media="image",
        created_at=now,
        ready_at=now + cfg.queue_delay,
        source=up.path,
        source_name=up.name,
        source_sha256=hashlib.sha256(up.path.read_bytes()).hexdigest(),
        cost=2.0 if any(s["module"] == "sharpen3" for s in jconfig["config"]) else 1.0,
        processing_time=cfg.time_per_job + cfg.time_per_megapixel * up.width * up.height / 1e6,
        webhook=str(webhook) if webhook else None,
    )
    sim.add_job(job)
    with sim.lock:
        sim._record(job, "job", 0.0)
        record_of(request).created_job = job.id
        record_of(request).upload = up.uid
    if webhook:
        return ok({"trans_id": job.id, "status": "webhook"})
    deadline = now + cfg.web_sync_wait
    while job.status not in {"succeeded", "failed", "canceled"} and sim.clock.now() < deadline:
        await asyncio.sleep(sim.clock.wall_seconds(cfg.tick))
    return ok({"trans_id": job.id, "status": web_status(sim, job)})


def web_status(sim: Any, job: Job) -> str:
    if job.status == "queued" and sim.clock.now() >= job.ready_at:
        return "busy"  # ready but every processing slot of the account is taken
    return STATUS[job.status]


def _job_for(request: Request, fields: dict[str, Any], acc: AccountState) -> Job | None:
    sim = state_of(request)
    with sim.lock:
        job = sim.jobs.get(str(fields.get("trans_id")))
    if job is None or job.api != "web" or job.account != acc.spec.name:
        return None
    return job


def about_job(
    unknown: tuple[int, str],
) -> Callable[[Callable[[Request, Job], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """An endpoint about one of the account's jobs (``trans_id``); ``unknown`` is the error for any
    other job."""

    def wrap(
        handler: Callable[[Request, Job], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        @keyed
        async def endpoint(request: Request, fields: dict[str, Any], acc: AccountState) -> Response:
            if not fields.get("trans_id"):
                return required("trans_id")
            job = _job_for(request, fields, acc)
            if job is None:
                return err(*unknown)
            record_of(request).job = job.id
            return await handler(request, job)

        return endpoint

    return wrap


@about_job((10001, "Illegal Parameter"))
async def progress(request: Request, job: Job) -> Response:
    sim = state_of(request)
    data: dict[str, Any] = {"status": web_status(sim, job)}
    if job.status == "succeeded" and job.result_info:
        data["filesize"] = str(job.result_info["size"])
        data["content"] = "[sim] INFO: inference finished!\n"
    elif job.status == "failed":
        data["content"] = f"[sim] ERROR: {job.error_message}\n"
    answer = ok(data)
    if sim.config.poll_retry_after and job.status not in {"succeeded", "failed", "canceled"}:
        answer.headers["Retry-After"] = sim.told_seconds(
            sim.config.poll_retry_after
        )  # a hint for the next poll
    return answer


@about_job((10011, "Invalid download link"))
async def download(request: Request, job: Job) -> Response:
    sim = state_of(request)
    if job.status != "succeeded" or job.result is None:
        return err(10011, "Invalid download link")
    if not sim.charge_download(job):
        return err(30004, "Insufficient credits")
    stem = job.source_name.rsplit(".", 1)[0]
    return result_response(
        sim, job.result, CONTENT_TYPES[job.output_format], f"{job.tool}_{stem}.{job.output_format}"
    )


def fmt3(v: float) -> str:
    return f"{v:.3f}"


async def point(request: Request) -> Response:
    config = state_of(request).config
    if request.method == "POST" and config.web_point_get_only:
        if config.web_point_post_answer == "illegal_parameter":
            return err(10001, "Illegal Parameter")
        if config.web_point_post_answer == "missing_token":  # it reads the query string only
            return err(config.web_missing_token_code, {"api_token": ["The api token field is required."]})
        return Response("Method Not Allowed", status_code=405)
    return await _balance(request)


@keyed
async def _balance(request: Request, fields: dict[str, Any], acc: AccountState) -> Response:
    return ok({"max_num": fmt3(acc.spec.credits), "used_num": fmt3(acc.used + acc.frozen)})


@keyed
async def points_record(request: Request, fields: dict[str, Any], acc: AccountState) -> Response:
    sim = state_of(request)
    try:
        page = max(1, int(fields.get("page", 1)))
        limit = max(1, min(100, int(fields.get("limit", 20))))
    except ValueError:
        return err(10001, "Illegal Parameter")
    with sim.lock:
        entries = [
            e
            for e in sim.ledger
            if e.account == acc.spec.name and e.api == "web" and e.kind in {"job", "charge"}
        ]
        jobs = {e.job_id: sim.jobs.get(e.job_id) for e in entries}
    entries.reverse()  # newest first
    total = len(entries)
    rows = []
    for e in entries[(page - 1) * limit : page * limit]:
        job = jobs[e.job_id]
        module = job.config["config"][0]["module"] if job else e.tool
        name = job.source_name if job else "image"
        rows.append(
            {
                "point_type": "download" if e.kind == "charge" else "job",
                "job": module,
                "info": f"{module}_{name}.{job.output_format if job else 'jpg'}",
                "point": fmt3(e.amount),
                "balance": fmt3(e.balance),
                "created_at": record_time(sim, e.at),
            }
        )
    return ok(
        {
            "datas": rows,
            "current_page": page,
            "last_page": max(1, math.ceil(total / limit)),
            "per_page": limit,
            "total": total,
        }
    )


def record_time(sim: Any, at: float) -> str:
    """A points record's time, as the service writes it (UTC, whole seconds); on the wall clock,
    with milliseconds, when the simulator's clock is time-scaled."""
    when = dt.datetime.fromtimestamp(sim.clock.to_wall(at), dt.UTC)
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{when.microsecond // 1000:03d}" if sim.clock.scaled else text


def served(handler: Any, endpoint: str | None = None) -> Any:
    """``handler`` with the answer-level knobs: the 'garble' fault on ``endpoint``, and errors
    served without their JSON content type (``web_error_content_type``)."""

    async def route(request: Request) -> Response:
        sim = state_of(request)
        answer = await handler(request)
        if sim.config.web_error_content_type and isinstance(answer, JSONResponse) and is_json_error(answer):
            answer.headers["content-type"] = sim.config.web_error_content_type
            return answer
        return garble(sim, endpoint, answer) if endpoint else answer

    return route


routes = [
    Route("/web_api/v1/upload", served(upload, "upload"), methods=["POST"]),
    Route("/web_api/v1/transform", served(transform, "create_job"), methods=["POST"]),
    Route("/web_api/v1/progress", served(progress, "get_job"), methods=["GET", "POST"]),
    Route("/web_api/v1/download", served(download), methods=["GET", "POST"]),
    Route("/web_api/v1/point", served(point, "credits"), methods=["GET", "POST"]),
    Route("/web_api/v1/points/record", served(points_record), methods=["GET", "POST"]),
]
