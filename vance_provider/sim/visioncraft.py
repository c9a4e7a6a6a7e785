"""The VisionCraft API, simulated: option lists, SD 1.x / SDXL / img2img / GIF / video / upscale,
the two LLM chats, the key in the JSON body, free vs premium keys, and a per-key rate limit.

Served at the host's root as in the vendor document (``GET /models``, ``POST /generate``, ...).
Results are real files made with Pillow (PNG, animated GIF) and PyAV (H.264 MP4). Answers as in
the document: links (``{"images": [...]}``) for /generate, /generate-gif and /upscale; the file's
bytes for /generate-xl, /img2img and /img2video. Errors: ``{"detail": "..."}`` with 401 (unknown
key), 403 (key whose account left the channel, or a premium feature on a free key), 422 (bad
parameters) and 429 (rate limit, with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .common import FileResponse, state_of
from .state import SimState

MODELS = ["3guofeng3_v3.4", "absolutereality_v1.6", "absolutereality_v1.8.1", "amIReal_v4.1",
          "analog_diffusion_v1", "anything_v3.0", "anything_v4.5", "anything_V5"]  # fmt: skip
SAMPLERS = ["Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a"]
LORAS = ["0mib3_v10", "3DMM_V12", "age_slider_v20", "arcane_offset", "AstralMecha", "epi_noiseoffset2",
         "eye_size_slider_v1", "GrayClay_V1.5.5"]  # fmt: skip
MODELS_XL = ["sdxl-base", "sdxl-turbo", "playground-V2", "juggernaut-xl"]
FREE_XL = {"sdxl-turbo", "playground-V2"}
SAMPLERS_XL = ["euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "Ims"]
SCHEDULERS_XL = ["normal", "karras", "exponential", "sgm_uniform"]
IMG2IMG_SCHEDULERS = ["DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM"]
IMG2IMG_REFINERS = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
MODELS_LLM = ["nous-capybara-7b", "mistral-7b-instruct", "zephyr-7b-beta", "openchat-7b"]
MODELS_LLM_PREMIUM = ["gpt-3-5", "gpt-3-5-turbo", "gpt-3-5-turbo-instruct", "claude-instant", "google-palm",
                      "llama-2-7b", "llama-2-13b", "llama-2-70b"]  # fmt: skip
LISTS = {
    "/models": MODELS,
    "/samplers": SAMPLERS,
    "/loras": LORAS,
    "/models-xl": MODELS_XL,
    "/samplers-xl": SAMPLERS_XL,
    "/schedulers-xl": SCHEDULERS_XL,
    "/img2img/schedulers": IMG2IMG_SCHEDULERS,
    "/img2img/refiners": IMG2IMG_REFINERS,
    "/models-llm": MODELS_LLM,
    "/models-llm-premium": MODELS_LLM_PREMIUM,
}
SD_SIZE = 256  # the simulated SD 1.x images (the real ones are larger; the shape is what matters)
MAX_IMAGE_BYTES = 20 * 1024 * 1024


class Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers or {}


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


# --- requests -------------------------------------------------------------------------------
async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Refused(422, "The body must be a JSON object") from None
    if not isinstance(body, dict):
        raise Refused(422, "The body must be a JSON object")
    return body


def _key(sim: SimState, request: Request, body: dict[str, Any], *, premium: bool = False) -> str:
    """Check the key in the body: known, subscribed, premium when needed, within the rate limit."""
    token = body.get("token")
    cfg = sim.config
    if not isinstance(token, str) or token not in (*cfg.visioncraft_tokens, *cfg.visioncraft_premium_tokens):
        raise Refused(401, "Invalid token")
    if token in cfg.visioncraft_unsubscribed:
        raise Refused(403, "Subscribe to the VisionCraft Telegram channel to use this key")
    if cfg.visioncraft_rate_limit:
        allowed, retry = _take_rate(sim, token)
        if not allowed:
            raise Refused(429, "Too many requests, slow down", {"Retry-After": sim.told_seconds(retry)})
    if premium and token not in cfg.visioncraft_premium_tokens:
        raise Refused(403, "This feature is only for premium users: buy a subscription ($5 per month)")
    request.scope["sim_record"].account = "visioncraft"
    return token


def _take_rate(sim: SimState, token: str) -> tuple[bool, int]:
    limit, window = sim.config.visioncraft_rate_limit, sim.config.rate_window
    now = sim.clock.now()
    key = "visioncraft:" + hashlib.sha256(token.encode()).hexdigest()
    with sim.lock:
        start, count = sim.rate_windows.get(key, (now, 0))
        if now - start >= window:
            start, count = now, 0
        if count >= limit:
            return False, max(1, math.ceil(start + window - now))
        sim.rate_windows[key] = (start, count + 1)
        return True, 0


def _str(body: dict[str, Any], name: str, *, required: bool = False, choices: list[str] | None = None) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise Refused(422, f"Field required: {name}")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise Refused(422, f"{name} must be a non-empty string")
    if choices is not None and value not in choices:
        raise Refused(422, f"Unknown {name}: {value}")
    return value


def _int(body: dict[str, Any], name: str, lo: int, hi: int, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Refused(422, f"{name} must be an integer from {lo} to {hi}")
    return value


def _image(body: dict[str, Any]) -> Image.Image:
    data = body.get("image")
    if not isinstance(data, str) or not data:
        raise Refused(422, "Field required: image (base64)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(422, "image must be base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise Refused(413, "Image too large")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError):
        raise Refused(422, "image is not a readable picture") from None
    return img.convert("RGB")


# --- making results ---------------------------------------------------------------------------
def _picture(prompt: str, width: int, height: int, salt: int = 0) -> Image.Image:
    """A deterministic picture from the prompt: a tinted gradient with a disc."""
    h = hashlib.sha256(f"{prompt}|{salt}".encode()).digest()
    base = Image.linear_gradient("L").resize((width, height))
    img = Image.merge(
        "RGB",
        (
            base.point(lambda v: (v + h[0]) % 256),
            ImageOps.invert(base),
            base.point(lambda v: v // 2 + h[1] // 2),
        ),
    )
    draw = ImageDraw.Draw(img)
    r = min(width, height) // 4
    cx, cy = width * (h[2] % 50 + 25) // 100, height * (h[3] % 50 + 25) // 100
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(h[4], h[5], h[6]))
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _gif(prompt: str) -> bytes:
    frames = [_picture(prompt, 96, 96).rotate(i * 30) for i in range(6)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)
    return buf.getvalue()


def _video(img: Image.Image, path: Path) -> None:
    """A short real H.264 MP4 that slowly zooms into the image."""
    import av

    w, h = img.size
    scale = min(1.0, 256 / max(w, h))
    w, h = max(16, int(w * scale)) // 2 * 2, max(16, int(h * scale)) // 2 * 2
    img = img.resize((w, h))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(8):
            dx, dy = w * i // 40, h * i // 40
            frame = img.crop((dx, dy, w - dx, h - dy)).resize((w, h))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _store(sim: SimState, data: bytes, ext: str) -> str:
    folder = sim.workdir / "visioncraft"
    folder.mkdir(exist_ok=True)
    name = f"{sim.new_id()}.{ext}"
    (folder / name).write_bytes(data)
    return name


def _link(request: Request, name: str) -> str:
    return str(request.url_for("visioncraft_file", name=name))


# --- routes -----------------------------------------------------------------------------------
def _handler(fn: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request, state_of(request))
        except Refused as exc:
            return error(exc.status, exc.detail, exc.headers)

    return endpoint


async def option_list(request: Request) -> Response:
    return JSONResponse(LISTS[request.url.path])


async def generate(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body)
    _str(body, "model", required=True, choices=MODELS)
    _str(body, "sampler", required=True, choices=SAMPLERS)
    prompt = _str(body, "prompt", required=True)
    _str(body, "negative_prompt")
    count = _int(body, "image_count", 1, 5, 1)
    _int(body, "cfg_scale", 0, 20, 10)
    _int(body, "steps", 1, 50, 30)
    loras = body.get("loras") or {}
    if not isinstance(loras, dict) or any(k not in LORAS for k in loras):
        raise Refused(422, "loras must map known LoRA names to weights")
    links = [
        _link(request, _store(sim, _png(_picture(prompt, SD_SIZE, SD_SIZE, i)), "png")) for i in range(count)
    ]
    return JSONResponse({"images": links})


async def generate_xl(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body)
    model = _str(body, "model", required=True, choices=MODELS_XL)
    if model not in FREE_XL and body["token"] not in sim.config.visioncraft_premium_tokens:
        raise Refused(403, "This model is only for premium users: buy a subscription ($5 per month)")
    prompt = _str(body, "prompt", required=True)
    _str(body, "negative_prompt")
    _str(body, "sampler", choices=SAMPLERS_XL)
    _str(body, "scheduler", choices=SCHEDULERS_XL)
    width = _int(body, "width", 64, 1024, 1024)
    height = _int(body, "height", 64, 1024, 1024)
    if not isinstance(body.get("refiner", False), bool):
        raise Refused(422, "refiner must be a boolean")
    data = await asyncio.to_thread(lambda: _png(_picture(prompt, width, height)))
    return Response(data, media_type="image/png")


async def img2img(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body)
    prompt = _str(body, "prompt", required=True)
    _str(body, "negative_prompt")
    _str(body, "scheduler", choices=IMG2IMG_SCHEDULERS)
    _str(body, "refiner", choices=IMG2IMG_REFINERS)
    _int(body, "steps", 1, 50, 50)
    strength = body.get("strength", 0.8)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise Refused(422, "strength must be a number from 0 to 1")
    src = _image(body)
    out = Image.blend(src, _picture(prompt, *src.size), float(strength) * 0.5).filter(ImageFilter.SMOOTH)
    return Response(_png(out), media_type="image/png")


async def generate_gif(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body)
    _str(body, "sampler", required=True, choices=SAMPLERS)
    prompt = _str(body, "prompt", required=True)
    _str(body, "negative_prompt")
    _int(body, "cfg_scale", 0, 20, 10)
    _int(body, "steps", 1, 50, 30)
    return JSONResponse({"images": [_link(request, _store(sim, _gif(prompt), "gif"))]})


async def img2video(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body, premium=True)
    src = _image(body)
    folder = sim.workdir / "visioncraft"
    folder.mkdir(exist_ok=True)
    path = folder / f"{sim.new_id()}.mp4"
    await asyncio.to_thread(_video, src, path)
    return Response(path.read_bytes(), media_type="video/mp4")


async def upscale(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body)
    src = _image(body)
    out = src.resize((src.width * 2, src.height * 2), Image.Resampling.LANCZOS)
    return JSONResponse({"images": [_link(request, _store(sim, _png(out), "png"))]})


async def llm(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body)
    model = _str(body, "model", required=True, choices=MODELS_LLM)
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    ):
        raise Refused(422, "messages must be a list of {role, content}")
    return JSONResponse({"model": model, "response": f"[{model}] you said: {messages[-1]['content']}"})


async def premium_llm(request: Request, sim: SimState) -> Response:
    body = await _body(request)
    _key(sim, request, body, premium=True)
    model = _str(body, "model", required=True, choices=MODELS_LLM_PREMIUM)
    message = _str(body, "message", required=True)
    chat_id = _str(body, "chat_id")
    with sim.lock:
        chats = sim.visioncraft_chats
        if chat_id is not None and chat_id not in chats:
            raise Refused(404, "Unknown chat_id")
        chat_id = chat_id or sim.new_id("chat_", 8)
        chats[chat_id] = chats.get(chat_id, 0) + 1
        turn = chats[chat_id]
    return JSONResponse({"chat_id": chat_id, "turn": turn, "response": f"[{model}] {message}"})


async def result_file(request: Request) -> Response:
    sim = state_of(request)
    name = request.path_params["name"]
    path = sim.workdir / "visioncraft" / name
    if "/" in name or not path.is_file():
        return error(404, "Not found")
    media = {"png": "image/png", "gif": "image/gif", "mp4": "video/mp4"}[name.rsplit(".", 1)[-1]]
    return FileResponse(path, media, name)


routes = [
    *(Route(path, option_list, methods=["GET"]) for path in LISTS),
    Route("/generate", _handler(generate), methods=["POST"]),
    Route("/generate-xl", _handler(generate_xl), methods=["POST"]),
    Route("/img2img", _handler(img2img), methods=["POST"]),
    Route("/generate-gif", _handler(generate_gif), methods=["POST"]),
    Route("/img2video", _handler(img2video), methods=["POST"]),
    Route("/upscale", _handler(upscale), methods=["POST"]),
    Route("/llm", _handler(llm), methods=["POST"]),
    Route("/premium/llm", _handler(premium_llm), methods=["POST"]),
    Route("/visioncraft-files/{name}", result_file, methods=["GET"], name="visioncraft_file"),
]
