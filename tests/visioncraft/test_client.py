"""The visioncraft backend through the client, against the simulator over loopback."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from tests.visioncraft.conftest import FREE, PREMIUM, posts
from vance_provider.core import (
    AuthenticationError,
    InvalidConfigError,
    JobFailedError,
    JobStatus,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    SubscriptionRequiredError,
    UnknownToolError,
    VanceClient,
    detect_api,
    resolve,
)
from vance_provider.core.client import normalize_base_url
from vance_provider.core.vendors import VisionCraftBackend
from vance_provider.sim import SimulatorServer


def test_selecting_the_vendor(vc: VanceClient, sim: SimulatorServer) -> None:
    assert detect_api(FREE, "visioncraft") == "visioncraft"
    assert detect_api(FREE) == "web"  # a VisionCraft key has no shape: the vendor is chosen explicitly
    assert isinstance(vc.aio.backend, VisionCraftBackend)
    assert vc.api == "visioncraft" and vc.base_url == sim.base_url  # served at the host's root
    assert normalize_base_url(None, "visioncraft") is None
    assert VisionCraftBackend.default_base_url == "https://visioncraft-rs24.koyeb.app"


def test_option_lists_are_fetched_once(vc: VanceClient, sim: SimulatorServer) -> None:
    for kind in ("models", "samplers", "loras", "models_xl", "samplers_xl", "schedulers_xl",
                 "img2img_schedulers", "img2img_refiners", "models_llm", "models_llm_premium"):  # fmt: skip
        assert vc.visioncraft.options(kind)
    vc.visioncraft.options("models")
    assert sum(1 for r in sim.state.requests if r.path == "/models") == 1
    vc.visioncraft.options("models", refresh=True)
    assert sum(1 for r in sim.state.requests if r.path == "/models") == 2
    with pytest.raises(InvalidConfigError):
        vc.visioncraft.options("nope")


def test_generate_several_images(vc: VanceClient, tmp_path: Path) -> None:
    job, outputs = vc.visioncraft.generate(
        "Beautiful landscape",
        str(tmp_path / "land.png"),
        model="anything_V5",
        sampler="Euler",
        image_count=3,
        cfg_scale=8,
        steps=30,
        loras={"3DMM_V12": 1, "GrayClay_V1.5.5": 2},
        negative_prompt="blurry",
    )
    assert job.status is JobStatus.SUCCEEDED and job.api == "visioncraft" and job.tool == "generate"
    assert [Path(o).name for o in outputs] == ["land.png", "land_2.png", "land_3.png"]
    for o in outputs:
        assert Image.open(o).format == "PNG"
    assert not list(tmp_path.glob(".*partial*"))  # written atomically, nothing left behind
    assert vc.get_job(job.id) == job


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"model": "nope", "sampler": "Euler"}, "model 'nope' is not offered"),
        ({"model": "anything_V5", "sampler": "nope"}, "sampler"),
        ({"model": "anything_V5", "sampler": "Euler", "loras": {"nope": 1}}, "LoRA"),
        ({"model": "anything_V5", "sampler": "Euler", "image_count": 6}, "image_count"),
        ({"model": "anything_V5", "sampler": "Euler", "cfg_scale": 21}, "cfg_scale"),
        ({"model": "anything_V5", "sampler": "Euler", "steps": 0}, "steps"),
    ],
)
def test_generate_is_validated_before_any_request(
    vc: VanceClient, sim: SimulatorServer, tmp_path: Path, options: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        vc.visioncraft.generate("x", str(tmp_path / "o"), **options)
    assert posts(sim) == []


def test_generate_xl_and_the_free_models(
    vc_factory: Callable[..., VanceClient], sim: SimulatorServer, tmp_path: Path
) -> None:
    free = vc_factory()
    job, out = free.visioncraft.generate_xl(
        "a dog", str(tmp_path / "xl"), width=128, height=64, scheduler="karras"
    )
    assert (
        out.endswith("xl.png") and Image.open(out).size == (128, 64) and job.size == Path(out).stat().st_size
    )
    with pytest.raises(SubscriptionRequiredError) as info:  # the service refuses a paid model
        free.visioncraft.generate_xl("a dog", str(tmp_path / "paid"), model="sdxl-base", width=64, height=64)
    assert info.value.status_code == 403 and "subscription" in str(info.value)
    before = len(posts(sim))
    known_free = vc_factory(premium=False)  # told the key is free: refused locally, nothing sent
    with pytest.raises(SubscriptionRequiredError):
        known_free.visioncraft.generate_xl("a dog", str(tmp_path / "paid"), model="sdxl-base")
    assert len(posts(sim)) == before
    with pytest.raises(InvalidConfigError, match="width"):
        free.visioncraft.generate_xl("a dog", str(tmp_path / "x"), width=2048)
    paid = vc_factory(PREMIUM, premium=True)
    _, out = paid.visioncraft.generate_xl(
        "a dog", str(tmp_path / "paid.png"), model="sdxl-base", width=64, height=64
    )
    assert Image.open(out).size == (64, 64)


def test_text_to_gif(vc: VanceClient, tmp_path: Path) -> None:
    job, out = vc.visioncraft.text_to_gif(
        "waves", str(tmp_path / "anim"), sampler="Euler", steps=20, cfg_scale=5
    )
    assert out.endswith("anim.gif")
    assert Image.open(out).n_frames > 1 and job.tool == "text_to_gif"


def test_image_to_video_for_subscribers(
    vc_factory: Callable[..., VanceClient], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = make_image("still.png", 64, 48)
    job, out = vc_factory(PREMIUM).visioncraft.image_to_video(str(src), str(tmp_path / "clip"))
    assert out.endswith("clip.mp4") and job.media == "video"
    with av.open(out) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    with pytest.raises(SubscriptionRequiredError):
        vc_factory(FREE).visioncraft.image_to_video(str(src), str(tmp_path / "no"))


def test_upscale_and_img2img_as_jobs(
    vc: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = make_image("in.jpg", 40, 30)
    job, out = vc.enhance(str(src), str(tmp_path / "up"), "upscale")
    assert Image.open(out).size == (80, 60)
    job, out = vc.enhance(
        str(src), str(tmp_path / "i2i.png"), "img2img", {"prompt": "oil painting", "strength": 0.5, "steps": 10,
                                                         "scheduler": "KarrasDPM", "refiner": "no_refiner"}
    )  # fmt: skip
    assert Image.open(out).size == (40, 30) and job.tool == "img2img"
    again = vc.download(job, str(tmp_path / "copy.png"))  # results stay available for this client
    assert Path(again).read_bytes() == Path(out).read_bytes()


def test_submit_with_the_same_key_does_not_call_again(
    vc: VanceClient, sim: SimulatorServer, make_image: Callable[..., Path]
) -> None:
    src = make_image("in.jpg")
    first = vc.submit(str(src), "upscale", idempotency_key="k1")
    second = vc.submit(str(src), "upscale", idempotency_key="k1")
    assert first.id == second.id and posts(sim, "/upscale") == ["/upscale"]


def test_tool_validation(vc: VanceClient, sim: SimulatorServer, make_image: Callable[..., Path]) -> None:
    with pytest.raises(UnknownToolError, match="generate"):
        resolve("denoise", api="visioncraft")
    with pytest.raises(InvalidConfigError, match="prompt"):
        resolve("img2img", {"strength": 0.5}, api="visioncraft")
    with pytest.raises(InvalidConfigError, match="strength"):
        resolve("img2img", {"prompt": "x", "strength": 2}, api="visioncraft")
    with pytest.raises(InvalidConfigError, match="unknown option"):
        resolve("upscale", {"scale": 4}, api="visioncraft")
    with pytest.raises(InvalidConfigError, match="scheduler 'nope'"):
        vc.submit(str(make_image("in.jpg")), "img2img", {"prompt": "x", "scheduler": "nope"})
    with pytest.raises(InvalidConfigError, match="refiner"):
        vc.check_call(vc.tool_call("img2img", {"prompt": "x", "refiner": "nope"}))
    assert posts(sim) == []
    assert resolve("upscale", api="visioncraft").estimate() == 0.0


def test_llm_chats(vc_factory: Callable[..., VanceClient]) -> None:
    free = vc_factory()
    answer = free.visioncraft.llm(
        "mistral-7b-instruct", [{"role": "user", "content": "What is the meaning of life?"}]
    )
    assert "meaning of life" in answer["response"]
    with pytest.raises(InvalidConfigError):
        free.visioncraft.llm("gpt-3-5", [{"role": "user", "content": "x"}])
    with pytest.raises(SubscriptionRequiredError):
        free.visioncraft.premium_llm("gpt-3-5-turbo", "Hello!")
    paid = vc_factory(PREMIUM)
    first = paid.visioncraft.premium_llm("gpt-3-5-turbo", "Hello!")
    second = paid.visioncraft.premium_llm("gpt-3-5-turbo", "Again", chat_id=first["chat_id"])
    assert second["turn"] == 2
    with pytest.raises(NotFoundError):
        paid.visioncraft.premium_llm("gpt-3-5-turbo", "Again", chat_id="chat_unknown")


def test_bad_and_unsubscribed_keys(
    vc_factory: Callable[..., VanceClient], sim_factory: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    with pytest.raises(AuthenticationError) as info:
        vc_factory("not-a-key").visioncraft.text_to_gif("x", str(tmp_path / "a"), sampler="Euler")
    assert info.value.status_code == 401 and "not-a-key" not in str(info.value)
    server = sim_factory(visioncraft_unsubscribed=[FREE])
    with pytest.raises(AuthenticationError, match="Telegram") as info:
        vc_factory(FREE, server).visioncraft.text_to_gif("x", str(tmp_path / "b"), sampler="Euler")
    assert info.value.status_code == 403 and FREE not in str(info.value)


def test_rate_limit_is_waited_out_and_retried(
    vc_factory: Callable[..., VanceClient], sim_factory: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    server = sim_factory(visioncraft_rate_limit=2, rate_window=1.0)
    client = vc_factory(FREE, server)
    outs = [
        client.visioncraft.text_to_gif(f"p{i}", str(tmp_path / f"g{i}"), sampler="Euler")[1] for i in range(3)
    ]
    assert all(Path(o).exists() for o in outs)
    statuses = [r.status for r in server.state.requests if r.path == "/generate-gif"]
    assert statuses.count(429) >= 1 and statuses.count(200) == 3
    # With no retries left, the typed error comes through, with the service's Retry-After.
    slow = sim_factory(visioncraft_rate_limit=2, rate_window=30.0)
    strict = vc_factory(FREE, slow, retry=RetryPolicy(max_attempts=1))
    strict.visioncraft.text_to_gif("a", str(tmp_path / "h1"), sampler="Euler")
    strict.visioncraft.text_to_gif("b", str(tmp_path / "h2"), sampler="Euler")
    with pytest.raises(RateLimitedError) as info:
        strict.visioncraft.text_to_gif("c", str(tmp_path / "h3"), sampler="Euler")
    assert info.value.retry_after and info.value.retry_after >= 1


def test_unknown_job_is_failed_and_has_no_result(vc: VanceClient, tmp_path: Path) -> None:
    job = vc.get_job("vc_unknown")
    assert job.status is JobStatus.FAILED and job.error_code == "result_expired"
    with pytest.raises(JobFailedError):
        vc.wait("vc_unknown")
    with pytest.raises(JobFailedError):
        vc.download(job, str(tmp_path / "x"))
    assert vc.balance().available == float("inf")


def test_other_vendors_refuse_visioncraft_operations(sim: SimulatorServer, tmp_path: Path) -> None:
    from tests.conftest import OPEN_KEY

    with (
        VanceClient(OPEN_KEY, base_url=sim.base_url) as client,
        pytest.raises(InvalidConfigError, match="visioncraft"),
    ):
        client.visioncraft.generate("x", str(tmp_path / "o"), model="anything_V5", sampler="Euler")


def test_answers_in_base64_and_errors_with_http_200(vc: VanceClient, tmp_path: Path) -> None:
    """Images may come back as base64 strings in the list, and refusals as a 200 with "error"."""
    backend = vc.aio.backend
    assert isinstance(backend, VisionCraftBackend)
    png = tmp_path / "p.png"
    Image.new("RGB", (8, 8), "red").save(png)
    request = httpx.Request("POST", "http://x")
    answer = httpx.Response(
        200, json={"images": [base64.b64encode(png.read_bytes()).decode()]}, request=request
    )
    job = vc.run(backend._hold("generate", "image", "generate", answer))
    [out] = vc.run(backend.download_all(job, str(tmp_path / "from_b64")))
    assert out.endswith(".png") and Path(out).read_bytes() == png.read_bytes()
    refusal = httpx.Response(200, json={"error": "Invalid token"}, request=request)
    error = backend.map_error("generate", refusal)
    assert isinstance(error, AuthenticationError) or "Invalid token" in str(error)
    ok = httpx.Response(200, json={"images": ["http://x/a.png"]}, request=request)
    assert backend.map_error("generate", ok) is None


def test_visioncraft_calls_live_on_their_own_sub_client(vc: VanceClient, sim: SimulatorServer) -> None:
    from vance_provider.sim import DEMO_OPEN_KEY

    assert not hasattr(vc, "generate") and not hasattr(vc.aio, "llm")  # not on the general client
    assert repr(vc.visioncraft) == f"VisionCraft(base_url={sim.base_url!r})"
    with VanceClient(DEMO_OPEN_KEY, base_url=sim.base_url) as other:
        with pytest.raises(InvalidConfigError, match="speaks the 'open' API") as info:
            other.visioncraft  # noqa: B018 - the property is the check
        assert "api='visioncraft'" in str(info.value)
    assert not [r for r in sim.state.requests if r.method == "POST"]
