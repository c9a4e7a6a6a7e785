"""Bad input, table-driven: each case gets a typed error that names the input and what to fix,
before any upload or credit is spent, and the rest of a batch is not lost."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN, image_bytes
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.core.api import errors as E
from vance_provider.core.vendors.capabilities import CAPABILITIES

UPLOAD_PATHS = ("/web_api/v1/upload", "/web_api/v1/transform", "/api/v1/jobs", "/api/v1/uploads")


def _uploads(sim: Any) -> list[str]:
    return [r.path for r in sim.state.requests if r.path in UPLOAD_PATHS]


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "GIF")
    return buf.getvalue()


def _webp() -> bytes:
    return image_bytes(16, 16, "WEBP")


def _bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "BMP")
    return buf.getvalue()


# (id, api, file name, file bytes factory, tool, config, expected error, words the message must contain)
FILE_CASES = [
    (
        "text-as-jpg",
        "web",
        "photo.jpg",
        lambda: b"hello, not an image" * 10,
        "upscale",
        {},
        E.UnsupportedFormatError,
        "not a supported image",
    ),
    (
        "text-as-png-open",
        "open",
        "photo.png",
        lambda: b"\x00" * 300,
        "upscale",
        {},
        E.UnsupportedFormatError,
        "not a supported image",
    ),
    (
        "truncated-jpeg",
        "web",
        "cut.jpg",
        lambda: image_bytes(64, 48)[:-40],
        "upscale",
        {},
        E.UnreadableInputError,
        "truncated",
    ),
    (
        "truncated-png",
        "open",
        "cut.png",
        lambda: image_bytes(64, 48, "PNG")[:-30],
        "upscale",
        {},
        E.UnreadableInputError,
        "truncated",
    ),
    ("gif-web", "web", "anim.gif", _gif, "upscale", {}, E.UnsupportedFormatError, "gif"),
    ("gif-open", "open", "anim.gif", _gif, "upscale", {}, E.UnsupportedFormatError, "gif"),
    ("bmp-web", "web", "old.bmp", _bmp, "denoise", {}, E.UnsupportedFormatError, "bmp"),
    ("webp-web", "web", "pic.webp", _webp, "upscale", {}, E.UnsupportedFormatError, "webp"),
    ("empty-file", "open", "empty.jpg", lambda: b"", "upscale", {}, E.UnreadableInputError, "empty"),
    (
        "image-to-video-tool",
        "open",
        "still.jpg",
        lambda: image_bytes(),
        "video_upscale",
        {},
        E.MediaMismatchError,
        "takes videos",
    ),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files_fail_before_upload(case: tuple, sim: Any, tmp_path: Path) -> None:
    _, api, name, data, tool, config, error, words = case
    path = _write(tmp_path, name, data())
    with VanceClient(OPEN_KEY if api == "open" else WEB_TOKEN, base_url=sim.base_url) as client:
        with pytest.raises(error) as info:
            client.submit(str(path), tool, config)
    assert str(path) in str(info.value)
    assert words.lower() in str(info.value).lower()
    assert _uploads(sim) == []
    assert sim.state.ledger == []


def test_video_to_image_tool(sim: Any, test_video: Path) -> None:
    with VanceClient(OPEN_KEY, base_url=sim.base_url) as client, pytest.raises(E.MediaMismatchError) as info:
        client.submit(str(test_video), "upscale", {"scale": 2})
    assert "video" in str(info.value) and str(test_video) in str(info.value)
    assert _uploads(sim) == []


@pytest.mark.parametrize(
    "limit,value,error",
    [("max_image_bytes", 100, E.FileTooLargeError), ("max_image_pixels", 100, E.TooManyPixelsError)],
)
def test_web_limits(
    limit: str, value: int, error: type, sim: Any, make_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CAPABILITIES, "web", dataclasses.replace(CAPABILITIES["web"], **{limit: value}))
    path = make_image("big.png", 120, 90)
    with VanceClient(WEB_TOKEN, base_url=sim.base_url) as client, pytest.raises(error) as info:
        client.submit(str(path), "upscale", {"scale": 2})
    assert str(path) in str(info.value) and "limit" in str(info.value)
    assert _uploads(sim) == []


# (id, api, tool, config or jconfig, words in the message)
CONFIG_CASES: list[tuple[str, str, str, Any, str]] = [
    ("open-upscale-scale-3", "open", "upscale", {"scale": 3}, "scale"),
    ("web-upscale-scale-5", "web", "upscale", {"scale": 5}, "scale"),
    ("open-upscale-scale-string", "open", "upscale", {"scale": "4"}, "scale"),
    (
        "enlarge3-2x-model-scale-4",
        "web",
        "enlarge3",
        {"model_name": "EnlargeStandard_2x_Stable", "scale": 4},
        "does not fit",
    ),
    (
        "enlarge3-4x-model-scale-2",
        "web",
        "enlarge3",
        {"model_name": "EnlargeStandard_4x_Stable", "scale": 2},
        "does not fit",
    ),
    ("denoise-remove-noise-101", "web", "denoise", {"remove_noise": 101}, "remove_noise"),
    ("sharpen3-remove-blur-1.5", "web", "sharpen3", {"remove_blur": 1.5}, "remove_blur"),
    ("img2sr-strength-0.5", "web", "img2sr", {"strength": 0.5}, "strength"),
    ("deoldify2-render-factor-5", "web", "colorize", {"render_factor": 5}, "render_factor"),
    ("img2anime-style-strength-13", "web", "img2anime", {"style_strength": 13}, "style_strength"),
    ("img2anime-control-mode-3", "web", "img2anime", {"control_mode": 3}, "control_mode"),
    ("img2anime-description-too-long", "web", "img2anime", {"description": "x" * 141}, "140"),
    ("img2anime-unknown-style", "web", "img2anime", {"model_name": "style99"}, "model_name"),
    ("real-esrgan-scale-3x", "web", "real_esrgan", {"scale": "3x"}, "scale"),
    ("chainner-scale-int", "web", "chainner", {"scale": 2}, "scale"),
    ("open-custom-no-prompt", "open", "custom", {}, "prompt"),
    ("open-custom-blank-prompt", "open", "custom", {"prompt": "  "}, "prompt"),
    ("open-video-upscale-8", "open", "video_upscale", {"scale": 8}, "scale"),
    ("open-video-hdr-quality", "open", "video_hdr", {"quality": "ultra"}, "quality"),
    ("open-video-face-codec", "open", "video_face_enhance", {"codec": "vp9"}, "codec"),
    ("open-face-enhance-not-bool", "open", "sharpen", {"face_enhance": "yes"}, "face_enhance"),
    ("unknown-option-open", "open", "denoise", {"strenght": 3}, "strenght"),
    ("unknown-option-web", "web", "denoise", {"strenght": 3}, "strenght"),
    (
        "out-params-quality-101",
        "web",
        "upscale",
        {"scale": 2, "out_params": {"compress": {"quality": 101}}},
        "quality",
    ),
    ("out-params-dpi-3000", "web", "denoise", {"out_params": {"dpi": 3000}}, "dpi"),
    ("out-params-format-gif", "web", "denoise", {"out_params": {"format": "gif"}}, "format"),
    (
        "out-params-bg-color",
        "web",
        "remove_bg",
        {"out_params": {"bg_composed": {"bg_color": {"r": 300, "g": 0, "b": 0}}}},
        "bg_color",
    ),
    ("unknown-tool", "open", "teleport", {}, "unknown"),
    ("web-only-tool-on-open", "open", "colorize", {}, "web API"),
    ("open-only-tool-on-web", "web", "passport_photo", {}, "Open API"),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_configs_fail_before_upload(case: tuple, sim: Any, make_image: Any) -> None:
    _, api, tool, config, words = case
    path = make_image("ok.jpg")
    with VanceClient(OPEN_KEY if api == "open" else WEB_TOKEN, base_url=sim.base_url) as client:
        with pytest.raises(E.InvalidConfigError) as info:
            client.submit(str(path), tool, config)
    assert words.lower() in str(info.value).lower()
    assert _uploads(sim) == [] and sim.state.ledger == []


def _step(module: str, **params: Any) -> dict[str, Any]:
    return {"name": module, "config": {"module": module, "module_params": params}}


JCONFIG_CASES = [
    (
        "enlarge-before-denoise",
        {"name": "wf", "config": [_step("enlarge3", scale=2), _step("denoise")]},
        "last step",
    ),
    ("matting-before-sharpen", {"name": "wf", "config": [_step("matting"), _step("sharpen3")]}, "last step"),
    (
        "out-params-not-last",
        {
            "name": "wf",
            "config": [
                {
                    "name": "d",
                    "config": {"module": "denoise", "module_params": {}, "out_params": {"dpi": 300}},
                },
                _step("sharpen3"),
            ],
        },
        "last step",
    ),
    ("not-json", "{not json", "JSON"),
    ("no-config", {"name": "x"}, "config"),
    ("empty-workflow", {"name": "x", "config": []}, "no steps"),
    ("unknown-module", _step("teleport"), "unknown"),
]


@pytest.mark.parametrize("case", JCONFIG_CASES, ids=[c[0] for c in JCONFIG_CASES])
def test_bad_jconfig(case: tuple, sim: Any, make_image: Any) -> None:
    _, jconfig, words = case
    path = make_image("ok.jpg")
    with VanceClient(WEB_TOKEN, base_url=sim.base_url) as client:
        with pytest.raises(E.InvalidConfigError) as info:
            client.submit(str(path), "workflow", jconfig=jconfig)
    assert words.lower() in str(info.value).lower()
    assert _uploads(sim) == []


@pytest.mark.parametrize("base_url", ["ftp://example.com", "http://", "http://host:99999", "https://"])
def test_malformed_base_url(base_url: str) -> None:
    with pytest.raises(E.ConfigurationError) as info:
        VanceClient(OPEN_KEY, base_url=base_url)
    assert "base_url" in str(info.value)


@pytest.mark.parametrize("api,token", [("web", "wrong-token-123"), ("open", "sk_live_wrong000000000000")])
def test_wrong_key(api: str, token: str, sim: Any, make_image: Any) -> None:
    with VanceClient(token, base_url=sim.base_url) as client, pytest.raises(E.AuthenticationError) as info:
        client.balance()
    assert token not in str(info.value) and token not in repr(info.value)
    assert sim.state.ledger == []


def test_revoked_key(sim: Any) -> None:
    sim.state.revoke(OPEN_KEY)
    with VanceClient(OPEN_KEY, base_url=sim.base_url) as client, pytest.raises(E.AuthenticationError):
        client.balance()


def test_missing_source(sim: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with (
        VanceClient(OPEN_KEY, base_url=sim.base_url) as client,
        pytest.raises(E.UnreadableInputError) as info,
    ):
        client.submit(str(missing), "upscale", {"scale": 2})
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)


def test_empty_source_folder(sim: Any, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with VanceClient(OPEN_KEY, base_url=sim.base_url) as client, pytest.raises(E.InvalidInputError) as info:
        client.run_batch(BatchSpec(str(tmp_path / "in"), str(tmp_path / "out"), "upscale"))
    assert "no input files" in str(info.value)


def test_destination_not_writable(sim: Any, make_image: Any, tmp_path: Path) -> None:
    make_image("in/a.jpg")
    blocker = _write(tmp_path, "file-not-dir", b"x")
    with VanceClient(OPEN_KEY, base_url=sim.base_url) as client, pytest.raises(E.InvalidInputError) as info:
        client.run_batch(BatchSpec(str(tmp_path / "in"), str(blocker / "out"), "upscale"))
    assert "not writable" in str(info.value)
    assert _uploads(sim) == [] and sim.state.ledger == []


@pytest.mark.parametrize("api", ["web", "open"])
def test_a_batch_keeps_the_good_inputs(api: str, sim: Any, make_image: Any, tmp_path: Path) -> None:
    """Bad inputs fail alone, with their reason; the good ones are done and charged once."""
    good = [make_image(f"in/good{i}.jpg") for i in range(3)]
    bad = {
        _write(tmp_path, "in/fake.jpg", b"not an image at all" * 5): "not a supported image",
        _write(tmp_path, "in/cut.jpg", image_bytes(64, 48)[:-50]): "truncated",
        _write(tmp_path, "in/empty.png", b""): "empty",
    }
    with VanceClient(OPEN_KEY if api == "open" else WEB_TOKEN, base_url=sim.base_url) as client:
        result = client.run_batch(
            BatchSpec(
                str(tmp_path / "in"),
                str(tmp_path / "out"),
                "upscale",
                {"scale": 2},
                poll_interval=0.05,
                on_failure="continue",
            )
        )
    by_source = {Path(i.source).name: i for i in result.items}
    for g in good:
        assert by_source[g.name].state == "done"
        with Image.open(by_source[g.name].output) as out:
            assert out.size == (128, 96)
    for path, words in bad.items():
        assert by_source[path.name].state == "failed"
        assert words in by_source[path.name].error
    assert len(sim.state.charges()) == 3 and sim.state.double_charges() == []
    with pytest.raises(E.BatchFailedError):
        result.raise_for_failures("fail")


def test_traversal_unicode_and_collisions(sim: Any, tmp_path: Path) -> None:
    """Odd names stay under the destination; names that collide get distinct outputs."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    names = ["a.jpg", "a.png", "caf\u00e9 \u2603.jpg", "..weird..name.jpg", "sub/../b.jpg"]
    for n in names:
        fmt = "PNG" if n.endswith(".png") else "JPEG"
        _write(src, n.replace("sub/../", ""), image_bytes(32, 24, fmt))
    urls = [str(src / n) for n in names]
    dest = tmp_path / "out"
    with VanceClient(OPEN_KEY, base_url=sim.base_url) as client:
        result = client.run_batch(BatchSpec(urls, str(dest), "upscale", {"scale": 2}, poll_interval=0.05))
    outputs = [Path(o) for o in result.outputs]
    assert len(outputs) == len(set(outputs)) == 5
    for out in outputs:
        assert dest.resolve() in out.resolve().parents
        assert not out.name.startswith(".")
    manifest = json.loads((dest / "_vance_manifest.json").read_text())
    assert len(manifest["items"]) == 5
    assert {o.name for o in outputs} >= {"a.jpg", "b.jpg"}  # "sub/.." cannot climb out
