"""VisionCraft API (api="visioncraft"): synchronous generation behind the one job model.

Every VisionCraft call answers in the same request, so ``submit`` performs it and returns a
job that has already ``succeeded``. The answer's images are either links (``{"images":
[url, ...]}``), base64 strings in that list, or the raw bytes of the file; links are kept
as they are and fetched by ``download`` (without the key), bytes are kept in a bounded
set of temporary files. ``download`` writes them to any fsspec URL atomically.

The key travels ONLY in the JSON body of POST requests: never in a URL, a header, a log
line, a job's ``raw`` answer or a repr. Option lists (models, samplers, schedulers, LoRAs,
refiners) are fetched once per client and checked before a generation is requested.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import shutil
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import httpx

from ...api.errors import (
    APIError,
    AuthenticationError,
    FileTooLargeError,
    InvalidConfigError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    SubscriptionRequiredError,
    VanceError,
)
from ...api.models import Balance, Job, JobStatus, Media
from ...media import EXT_BY_TYPE, _has_media_ext, ext_from_response, sniff
from ...state.storage import AtomicWriter
from ..base import Backend, Submission
from .capabilities import CAPABILITIES, MAX_SOURCE_BYTES

if TYPE_CHECKING:
    from ...tools import ToolCall

# The option lists the API serves (GET, no key).
LISTS: dict[str, str] = {
    "models": "/models",
    "samplers": "/samplers",
    "loras": "/loras",
    "models_xl": "/models-xl",
    "samplers_xl": "/samplers-xl",
    "schedulers_xl": "/schedulers-xl",
    "img2img_schedulers": "/img2img/schedulers",
    "img2img_refiners": "/img2img/refiners",
    "models_llm": "/models-llm",
    "models_llm_premium": "/models-llm-premium",
}
# Calls answered with the result itself: JSON (links or base64) or the file's bytes.
MEDIA_ANSWERS = {"upscale", "img2img", "generate", "generate_xl", "text_to_gif", "image_to_video"}
FREE_XL_MODELS = ("sdxl-turbo", "playground-V2")  # every other SDXL model needs the subscription
MAX_IMAGE_COUNT = 5
PREMIUM_HINT = (
    "VisionCraft's free tier has SD 1.x, sdxl-turbo/playground-V2, img2img, GIFs, upscaling and the "
    "free LLMs; other SDXL models, image-to-video and premium LLMs need the $5/month subscription"
)
AUTH_HINT = (
    "check the VisionCraft key; it works only while its Telegram account is subscribed to the "
    "VisionCraft channel (resubscribing restores it)"
)


@dataclass
class _Held:
    job: Job
    urls: list[str] = field(default_factory=list)  # results the service links to
    files: list[tuple[Path, str]] = field(default_factory=list)  # results sent as bytes: (file, ext)


class VisionCraftBackend(Backend):
    api = "visioncraft"
    capabilities = CAPABILITIES
    default_base_url = "https://visioncraft-rs24.koyeb.app"
    extra_options = ("premium",)
    max_held = 256  # finished results kept for download (oldest dropped first)

    def __init__(self, *args: Any, premium: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.premium = premium  # False: refuse paid-only models locally, before any request
        self._lists: dict[str, list[str]] = {}
        self._list_lock: asyncio.Lock | None = None
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="vance-visioncraft-"))
        self.outputs: dict[str, list[str]] = {}  # job id -> where download() wrote its results

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.to_thread(shutil.rmtree, self._tmp, True)

    # --- errors -------------------------------------------------------------------------------
    def map_error(self, name: str, response: httpx.Response) -> VanceError | None:
        status = response.status_code
        is_json = response.headers.get("content-type", "").startswith("application/json")
        body: Any = None
        if is_json:
            try:
                body = response.json()
            except ValueError:
                if status == 200:
                    return self.parse_json_error(name, response)
                body = None
        if status == 200 and not (
            isinstance(body, dict) and ("error" in body or "detail" in body) and "images" not in body
        ):
            return self._check_success(name, response, body, is_json)
        message = _message(body) or f"HTTP {status}"
        low = message.lower()
        cls: type[APIError]
        if status == 429 or "too many requests" in low or "rate limit" in low:
            cls = RateLimitedError
        elif status == 402 or "premium" in low:
            cls = SubscriptionRequiredError
        elif status in (401, 403):
            cls = AuthenticationError
        elif status == 404:
            cls = NotFoundError
        elif status >= 500:
            cls = ServerError
        else:
            cls = InvalidRequestError
        hint = {
            AuthenticationError: AUTH_HINT,
            SubscriptionRequiredError: PREMIUM_HINT,
            RateLimitedError: "lower max_concurrency; the client waits and retries",
        }.get(cls)
        return cls(
            f"VisionCraft API {name}: {self.clean(message)} (HTTP {status})",
            code=status if status != 200 else "error",
            status_code=status,
            retry_after=self.retry_after(response),
            hint=hint,
        )

    def parse_json_error(self, name: str, response: httpx.Response) -> ProtocolError:
        try:
            self.parse_json(name, response, object)
        except ProtocolError as exc:
            return exc
        return self.protocol_error(name, response, "malformed JSON")

    def _check_success(
        self, name: str, response: httpx.Response, body: Any, is_json: bool
    ) -> VanceError | None:
        """A 200 that is not what the endpoint gives: an option list that is no list of names, a
        result that is neither JSON nor a file of a known type (an HTML page, say)."""
        if name in LISTS:
            if not is_json:
                return self.protocol_error(name, response, "expected a JSON list of names")
            if not isinstance(body, list) or not all(isinstance(x, str) for x in body):
                return self.protocol_error(name, response, "expected a JSON list of names")
        elif name in MEDIA_ANSWERS and not is_json and sniff(response.content[:64]) is None:
            return self.protocol_error(name, response, "the answer is neither JSON nor an image or video")
        return None

    # --- HTTP helpers -------------------------------------------------------------------------
    async def _post(self, name: str, path: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{self.base_url}{path}"
        payload = {**body, "token": self.token.reveal()}  # the key goes in the JSON body only
        return await self.call(name, lambda: self.http.post(url, json=payload))

    async def list_options(self, kind: str, *, refresh: bool = False) -> list[str]:
        """One of the service's option lists (see ``LISTS``), fetched once per client."""
        if kind not in LISTS:
            raise InvalidConfigError(f"unknown VisionCraft list {kind!r}", hint="one of " + ", ".join(LISTS))
        if self._list_lock is None:
            self._list_lock = asyncio.Lock()
        async with self._list_lock:
            if refresh or kind not in self._lists:
                url = f"{self.base_url}{LISTS[kind]}"
                data = (await self.call(kind, lambda: self.http.get(url))).json()
                if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
                    raise ServerError(f"VisionCraft API {kind}: expected a list of names")
                self._lists[kind] = data
            return list(self._lists[kind])

    async def _check_in(self, kind: str, value: str, what: str) -> None:
        options = await self.list_options(kind)
        if value not in options:
            shown = ", ".join(repr(o) for o in options[:15]) + (", ..." if len(options) > 15 else "")
            raise InvalidConfigError(
                f"visioncraft: {what} {value!r} is not offered", hint=f"use one of {shown}"
            )

    # --- results --------------------------------------------------------------------------------
    async def _hold(self, tool: str, media: Media, endpoint: str, response: httpx.Response) -> Job:
        """Turn a synchronous answer into a succeeded job and keep its results for download."""
        job_id = "vc_" + uuid.uuid4().hex
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        held = _Held(job=None)  # type: ignore[arg-type]
        if ctype == "application/json":
            data = response.json()
            images = data.get("images") if isinstance(data, dict) else data
            if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
                raise ServerError(f"VisionCraft API {endpoint}: the answer has no images")
            for n, item in enumerate(images):
                if item.startswith(("http://", "https://", "/")):
                    held.urls.append(urljoin(self.base_url + "/", item))
                else:  # a base64 image in the list
                    try:
                        blob = base64.b64decode(item, validate=True)
                    except (binascii.Error, ValueError):
                        raise ServerError(
                            f"VisionCraft API {endpoint}: image {n + 1} is neither a URL nor base64"
                        ) from None
                    held.files.append(await self._spill(job_id, n, blob, _sniff_ext(blob, media)))
            kind = "urls" if held.urls else "base64"
        else:
            blob = response.content
            if not blob:
                raise ServerError(f"VisionCraft API {endpoint}: empty answer")
            ext = sniff(blob[:64]) or EXT_BY_TYPE.get(ctype) or _sniff_ext(blob, media)
            held.files.append(await self._spill(job_id, 0, blob, ext))
            kind = "bytes"
        size = (
            held.files[0][0].stat().st_size if held.files and not held.urls and len(held.files) == 1 else None
        )
        held.job = Job(
            id=job_id,
            api="visioncraft",
            tool=tool,
            status=JobStatus.SUCCEEDED,
            raw_status="succeeded",
            media=media,
            size=size,
            credits_estimated=0.0,
            credits_charged=0.0,
            raw={"endpoint": endpoint, "result": kind, "count": len(held.urls) + len(held.files)},
        )
        self._held[job_id] = held
        while len(self._held) > self.max_held:
            _, old = self._held.popitem(last=False)
            self._drop_files(old)
        return held.job

    async def _spill(self, job_id: str, n: int, blob: bytes, ext: str) -> tuple[Path, str]:
        path = self._tmp / f"{job_id}-{n}.{ext}"
        await asyncio.to_thread(path.write_bytes, blob)
        return path, ext

    @staticmethod
    def _drop_files(held: _Held) -> None:
        for path, _ in held.files:
            path.unlink(missing_ok=True)

    async def _read_b64(self, source: str, storage_options: dict[str, Any] | None) -> str:
        async with self.open_source(source, storage_options) as fh:
            data = await asyncio.to_thread(fh.read, MAX_SOURCE_BYTES + 1)
        if len(data) > MAX_SOURCE_BYTES:
            raise FileTooLargeError(
                f"over {MAX_SOURCE_BYTES // (1024 * 1024)} MB; VisionCraft takes the image inside a JSON body",
                source=source,
                hint="resize or compress it",
            )
        return base64.b64encode(data).decode("ascii")

    # --- the batch verbs ----------------------------------------------------------------------
    async def check_call(self, call: ToolCall) -> None:
        cfg = call.open_config or {}
        if call.open_tool == "img2img":
            if "scheduler" in cfg:
                await self._check_in("img2img_schedulers", cfg["scheduler"], "img2img scheduler")
            if "refiner" in cfg:
                await self._check_in("img2img_refiners", cfg["refiner"], "img2img refiner")

    async def create(self, submission: Submission) -> Job:
        call, idempotency_key = submission.call, submission.idempotency_key
        if idempotency_key and self._by_key.get(idempotency_key) in self._held:
            return self._held[self._by_key[idempotency_key]].job  # asked before: same job, no new call
        await self.check_call(call)
        image = await self._read_b64(submission.source, submission.storage_options)
        if call.open_tool == "upscale":
            response = await self._post("upscale", "/upscale", {"image": image})
            job = await self._hold(call.tool, "image", "upscale", response)
        elif call.open_tool == "img2img":
            body = {**(call.open_config or {}), "image": image}
            response = await self._post("img2img", "/img2img", body)
            job = await self._hold(call.tool, "image", "img2img", response)
        else:  # resolve() only lets the two tools through
            raise InvalidConfigError(f"visioncraft: {call.tool!r} is not a batch tool")
        if idempotency_key:
            self._by_key[idempotency_key] = job.id
        return job

    async def get_job(self, job_id: str) -> Job:
        held = self._held.get(job_id)
        if held is not None:
            return held.job
        return Job(
            id=job_id,
            api="visioncraft",
            tool="",
            status=JobStatus.FAILED,
            raw_status="expired",
            error_code="result_expired",
            error_message="VisionCraft answers synchronously; this client no longer holds the result",
        )

    async def download(self, job: Job, dest: str, storage_options: dict[str, Any] | None = None) -> str:
        return (await self.download_all(job, dest, storage_options))[0]

    async def download_all(
        self, job: Job, dest: str, storage_options: dict[str, Any] | None = None
    ) -> list[str]:
        """Write every result of ``job``: the first to ``dest``, the n-th to ``<stem>_<n>.<ext>``."""
        held = self._held.get(job.id)
        if held is None:
            raise NotFoundError(
                f"VisionCraft job {job.id}: the result is no longer held by this client",
                hint="VisionCraft keeps nothing to fetch later; submit again",
            )
        default_ext = "mp4" if job.media == "video" else "png"
        outputs: list[str] = []
        for n, url in enumerate(held.urls):
            outputs.append(
                await self.stream_to(
                    "result_file",
                    functools.partial(self.http.stream, "GET", url),  # no key: it is another host's file
                    _nth(dest, n),
                    None,
                    lambda r: ext_from_response(r, default_ext),
                    storage_options,
                )
            )
        for n, (path, ext) in enumerate(held.files, start=len(held.urls)):
            target = _nth(dest, n)
            final = target if _has_media_ext(target) else f"{target}.{ext}"
            outputs.append(await asyncio.to_thread(_copy_atomic, path, final, self.options(storage_options)))
        self.outputs[job.id] = outputs
        return outputs

    async def cancel(self, job_id: str) -> Job:
        return await self.get_job(job_id)  # every job is finished when submit returns

    async def delete(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        if held is not None:
            self._drop_files(held)

    async def balance(self) -> Balance:
        """VisionCraft has no credits (a free tier and a subscription): nothing runs out."""
        return Balance(available=float("inf"), used=0.0)

    # --- single-job operations ------------------------------------------------------------------
    async def generate(
        self,
        prompt: str,
        *,
        model: str,
        sampler: str,
        image_count: int = 1,
        negative_prompt: str | None = None,
        cfg_scale: int | None = None,
        steps: int | None = None,
        loras: dict[str, float] | None = None,
    ) -> Job:
        """Stable Diffusion 1.x (``POST /generate``): up to 5 images, answered as links."""
        _need_prompt(prompt)
        _int_in("image_count", image_count, 1, MAX_IMAGE_COUNT)
        if cfg_scale is not None:
            _int_in("cfg_scale", cfg_scale, 0, 20)
        if steps is not None:
            _int_in("steps", steps, 1, 50)
        await self._check_in("models", model, "model")
        await self._check_in("samplers", sampler, "sampler")
        if loras is not None:
            if not isinstance(loras, dict):
                raise InvalidConfigError("visioncraft: loras must be a mapping of LoRA name to weight")
            for name, weight in loras.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise InvalidConfigError(f"visioncraft: the weight of LoRA {name!r} must be a number")
                await self._check_in("loras", name, "LoRA")
        body = {"model": model, "sampler": sampler, "prompt": prompt, "image_count": image_count}
        body.update(_present(negative_prompt=negative_prompt, cfg_scale=cfg_scale, steps=steps, loras=loras))
        return await self._generate("generate", "generate", body)

    async def generate_xl(
        self,
        prompt: str,
        *,
        model: str = "sdxl-turbo",
        sampler: str = "euler",
        scheduler: str = "normal",
        negative_prompt: str | None = None,
        width: int = 1024,
        height: int = 1024,
        refiner: bool = False,
    ) -> Job:
        """Stable Diffusion XL (``POST /generate-xl``): one image, answered as bytes."""
        _need_prompt(prompt)
        _int_in("width", width, 64, 1024)
        _int_in("height", height, 64, 1024)
        if not isinstance(refiner, bool):
            raise InvalidConfigError("visioncraft: refiner must be true or false for SDXL")
        await self._check_in("models_xl", model, "SDXL model")
        if self.premium is False and model not in FREE_XL_MODELS:
            raise SubscriptionRequiredError(
                f"visioncraft: SDXL model {model!r} is for subscribers; the free ones are "
                + " and ".join(FREE_XL_MODELS),
                hint=PREMIUM_HINT,
            )
        await self._check_in("samplers_xl", sampler, "SDXL sampler")
        await self._check_in("schedulers_xl", scheduler, "SDXL scheduler")
        body: dict[str, Any] = {
            "prompt": prompt,
            "model": model,
            "width": width,
            "height": height,
            "sampler": sampler,
            "scheduler": scheduler,
            "refiner": refiner,
        }
        body.update(_present(negative_prompt=negative_prompt))
        return await self._generate("generate_xl", "generate-xl", body)

    async def text_to_gif(
        self,
        prompt: str,
        *,
        sampler: str,
        negative_prompt: str | None = None,
        cfg_scale: int | None = None,
        steps: int | None = None,
    ) -> Job:
        """Text to GIF (``POST /generate-gif``), answered as a link."""
        _need_prompt(prompt)
        if cfg_scale is not None:
            _int_in("cfg_scale", cfg_scale, 0, 20)
        if steps is not None:
            _int_in("steps", steps, 1, 50)
        await self._check_in("samplers", sampler, "sampler")
        body: dict[str, Any] = {"sampler": sampler, "prompt": prompt}
        body.update(_present(negative_prompt=negative_prompt, cfg_scale=cfg_scale, steps=steps))
        return await self._generate("text_to_gif", "generate-gif", body)

    async def image_to_video(self, source: str, storage_options: dict[str, Any] | None = None) -> Job:
        """Image to video (``POST /img2video``, subscribers only), answered as MP4 bytes."""
        if self.premium is False:
            raise SubscriptionRequiredError(
                "visioncraft: image to video is for subscribers", hint=PREMIUM_HINT
            )
        image = await self._read_b64(source, storage_options)
        return await self._generate("image_to_video", "img2video", {"image": image}, "video")

    async def _generate(self, name: str, path: str, body: dict[str, Any], media: Media = "image") -> Job:
        """``POST /<path>``; the answer held as a finished job."""
        return await self._hold(name, media, path, await self._post(name, f"/{path}", body))

    async def llm(self, model: str, messages: list[dict[str, str]]) -> Any:
        """Free LLM chat (``POST /llm``); returns the service's answer as is."""
        if not isinstance(messages, list) or not messages:
            raise InvalidConfigError("visioncraft llm: messages must be a non-empty list")
        await self._check_in("models_llm", model, "LLM model")
        return (await self._post("llm", "/llm", {"model": model, "messages": messages})).json()

    async def premium_llm(self, model: str, message: str, chat_id: str | None = None) -> Any:
        """Premium LLM chat (``POST /premium/llm``, subscribers only); pass ``chat_id`` to continue."""
        if self.premium is False:
            raise SubscriptionRequiredError(
                "visioncraft: premium LLMs are for subscribers", hint=PREMIUM_HINT
            )
        await self._check_in("models_llm_premium", model, "premium LLM model")
        body: dict[str, Any] = {"model": model, "message": message, **_present(chat_id=chat_id)}
        return (await self._post("premium_llm", "/premium/llm", body)).json()


def _message(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "error", "message", "msg"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list):  # FastAPI-style validation errors
                return "; ".join(str(v.get("msg", v)) if isinstance(v, dict) else str(v) for v in value)
    if isinstance(body, str):
        return body
    return ""


def _present(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _need_prompt(prompt: Any) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidConfigError("visioncraft: prompt must be a non-empty string")


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidConfigError(f"visioncraft: {name}={value!r} is out of range", hint=f"use {lo} to {hi}")


def _sniff_ext(blob: bytes, media: Media) -> str:
    """The result's extension by its first bytes (the project's one sniffer), else by its media."""
    return sniff(blob[:64]) or ("mp4" if media == "video" else "png")


def _nth(dest: str, n: int) -> str:
    """``dest`` for the first result, ``<stem>_<n+1>[.<ext>]`` for the others."""
    if n == 0:
        return dest
    if _has_media_ext(dest):
        stem, ext = dest.rsplit(".", 1)
        return f"{stem}_{n + 1}.{ext}"
    return f"{dest}_{n + 1}"


def _copy_atomic(path: Path, final: str, storage_options: dict[str, Any] | None) -> str:
    writer = AtomicWriter(final, storage_options)
    writer.open()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                writer.write(chunk)
        return writer.commit(path.stat().st_size)
    except BaseException:
        writer.abort()
        raise
