"""The simulated VisionCraft API as the vendor document describes it, over loopback HTTP."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from tests.conftest import fast_config
from tests.visioncraft.conftest import FREE, PREMIUM
from vance_provider.sim import SimulatorServer

LISTS = {
    "/models": "anything_V5",
    "/samplers": "Euler",
    "/loras": "3DMM_V12",
    "/models-xl": "sdxl-turbo",
    "/samplers-xl": "euler",
    "/schedulers-xl": "normal",
    "/img2img/schedulers": "DDIM",
    "/img2img/refiners": "no_refiner",
    "/models-llm": "mistral-7b-instruct",
    "/models-llm-premium": "gpt-3-5-turbo",
}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize(("path", "member"), sorted(LISTS.items()))
def test_option_lists(http: httpx.Client, path: str, member: str) -> None:
    r = http.get(path)
    assert r.status_code == 200
    assert member in r.json() and all(isinstance(x, str) for x in r.json())


def test_generate_answers_links_to_real_pngs(http: httpx.Client) -> None:
    body = {
        "model": "anything_V5",
        "sampler": "Euler",
        "prompt": "Beautiful landscape",
        "negative_prompt": "blurry",
        "image_count": 3,
        "token": FREE,
        "cfg_scale": 8,
        "steps": 30,
        "loras": {"3DMM_V12": 1, "GrayClay_V1.5.5": 2},
    }
    r = http.post("/generate", json=body)
    assert r.status_code == 200
    urls = r.json()["images"]
    assert len(urls) == 3
    for url in urls:
        img = Image.open(io.BytesIO(httpx.get(url).content))
        assert img.format == "PNG" and img.size == (256, 256)


def test_generate_xl_answers_png_bytes(http: httpx.Client) -> None:
    body = {"prompt": "Beautiful landscape", "model": "sdxl-turbo", "negative_prompt": "bad quality",
            "token": FREE, "height": 96, "width": 128, "sampler": "euler", "scheduler": "normal",
            "refiner": False}  # fmt: skip
    r = http.post("/generate-xl", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (128, 96)


def test_img2img_answers_png_bytes(http: httpx.Client, make_image: Callable[..., Path]) -> None:
    src = make_image("in.jpg", 80, 60)
    body = {"prompt": "Beautiful lady", "negative_prompt": "bad quality", "token": FREE, "image": b64(src),
            "steps": 50, "strength": 0.8, "refiner": "no_refiner", "scheduler": "DDIM"}  # fmt: skip
    r = http.post("/img2img", json=body)
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (80, 60)


def test_generate_gif_is_an_animated_gif(http: httpx.Client) -> None:
    body = {"sampler": "Euler", "prompt": "Beautiful landscape", "token": FREE, "cfg_scale": 8, "steps": 30}
    r = http.post("/generate-gif", json=body)
    [url] = r.json()["images"]
    gif = Image.open(io.BytesIO(httpx.get(url).content))
    assert gif.format == "GIF" and gif.n_frames > 1


def test_img2video_is_a_real_mp4_for_premium_keys(
    http: httpx.Client, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = make_image("in.png", 64, 48)
    r = http.post("/img2video", json={"token": PREMIUM, "image": b64(src)})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    out = tmp_path / "v.mp4"
    out.write_bytes(r.content)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in container.decode(stream)) >= 4
    refused = http.post("/img2video", json={"token": FREE, "image": b64(src)})
    assert refused.status_code == 403 and "premium" in refused.json()["detail"]


def test_upscale_answers_a_link(http: httpx.Client, make_image: Callable[..., Path]) -> None:
    src = make_image("in.jpg", 40, 30)
    r = http.post(
        "/upscale", json={"token": FREE, "image": b64(src)}, headers={"content-type": "application/json"}
    )
    [url] = r.json()["images"]
    assert Image.open(io.BytesIO(httpx.get(url).content)).size == (80, 60)


def test_llm_and_premium_llm(http: httpx.Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke."}]
    r = http.post("/llm", json={"model": "mistral-7b-instruct", "token": FREE, "messages": messages})
    assert r.status_code == 200 and "joke" in r.json()["response"]
    assert (
        http.post("/premium/llm", json={"model": "gpt-3-5-turbo", "token": FREE, "message": "Hi"}).status_code
        == 403
    )
    first = http.post(
        "/premium/llm", json={"model": "gpt-3-5-turbo", "token": PREMIUM, "message": "Hello!"}
    ).json()
    again = http.post(
        "/premium/llm",
        json={"model": "gpt-3-5-turbo", "token": PREMIUM, "message": "More", "chat_id": first["chat_id"]},
    ).json()
    assert again["chat_id"] == first["chat_id"] and again["turn"] == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "anything_V5", "sampler": "Euler", "prompt": "x"}, 401),  # no token
        ({"model": "anything_V5", "sampler": "Euler", "prompt": "x", "token": "nope"}, 401),
        ({"model": "nope", "sampler": "Euler", "prompt": "x", "token": FREE}, 422),
        ({"model": "anything_V5", "sampler": "Euler", "prompt": "x", "token": FREE, "image_count": 6}, 422),
        ({"model": "anything_V5", "sampler": "Euler", "prompt": "x", "token": FREE, "steps": 51}, 422),
        ({"model": "anything_V5", "sampler": "Euler", "prompt": "x", "token": FREE, "loras": {"zz": 1}}, 422),
    ],
)
def test_generate_errors(http: httpx.Client, body: dict[str, object], status: int) -> None:
    r = http.post("/generate", json=body)
    assert r.status_code == status and isinstance(r.json()["detail"], str)


def test_paid_sdxl_models_need_premium(http: httpx.Client) -> None:
    body = {"prompt": "x", "model": "sdxl-base", "width": 64, "height": 64}
    assert http.post("/generate-xl", json={**body, "token": FREE}).status_code == 403
    assert http.post("/generate-xl", json={**body, "token": PREMIUM}).status_code == 200
    assert (
        http.post("/generate-xl", json={**body, "model": "playground-V2", "token": FREE}).status_code == 200
    )


def test_unsubscribed_key_is_refused_until_resubscribed(sim_factory: Callable[..., SimulatorServer]) -> None:
    server = sim_factory(visioncraft_unsubscribed=[FREE])
    with httpx.Client(base_url=server.base_url) as http:
        body = {"sampler": "Euler", "prompt": "x", "token": FREE}
        r = http.post("/generate-gif", json=body)
        assert r.status_code == 403 and "Subscribe" in r.json()["detail"]
        server.state.config.visioncraft_unsubscribed.clear()  # resubscribed: the key works again
        assert http.post("/generate-gif", json=body).status_code == 200


def test_rate_limit_per_key(sim_factory: Callable[..., SimulatorServer]) -> None:
    server = sim_factory(visioncraft_rate_limit=2, rate_window=30.0)
    with httpx.Client(base_url=server.base_url) as http:
        body = {"sampler": "Euler", "prompt": "x", "token": FREE}
        assert [http.post("/generate-gif", json=body).status_code for _ in range(2)] == [200, 200]
        r = http.post("/generate-gif", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert http.post("/generate-gif", json={**body, "token": PREMIUM}).status_code == 200  # per key


def test_bad_bodies(http: httpx.Client) -> None:
    assert http.post("/upscale", content=b"not json").status_code == 422
    assert http.post("/upscale", json={"token": FREE, "image": "%%%"}).status_code == 422
    assert (
        http.post("/upscale", json={"token": FREE, "image": base64.b64encode(b"text").decode()}).status_code
        == 422
    )


def test_existing_sim_behaviour_is_untouched() -> None:
    # A default config still serves both VanceAI APIs; the VisionCraft routes are extra.
    cfg = fast_config()
    assert cfg.visioncraft_tokens == [FREE] and cfg.visioncraft_rate_limit == 0
