"""Local input checks: a bad input is refused before anything is uploaded or charged."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import image_bytes
from tests.core.helpers import uploads
from vance_provider.core import VanceClient
from vance_provider.core.api.errors import (
    FileTooLargeError,
    InvalidInputError,
    MediaMismatchError,
    TooManyPixelsError,
    UnreadableInputError,
    UnsupportedFormatError,
)
from vance_provider.core.inputs import check_input
from vance_provider.core.media import sniff
from vance_provider.core.vendors.capabilities import CAPABILITIES
from vance_provider.sim import SimulatorServer


def encoded(fmt: str, width: int = 32, height: int = 24, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), "red" if mode != "L" else 128).save(buf, format=fmt)
    return buf.getvalue()


BAD_INPUTS: dict[str, tuple[str, Callable[[], bytes]]] = {
    # case: (file name, content)
    "text-named-jpg": ("notes.jpg", lambda: b"this is not an image at all, just text\n" * 10),
    "html-named-png": ("page.png", lambda: b"<!doctype html><html><body>404</body></html>"),
    "truncated-jpeg": (
        "cut.jpg",
        lambda: image_bytes(64, 48, "JPEG")[: len(image_bytes(64, 48, "JPEG")) // 2],
    ),
    "truncated-png": ("cut.png", lambda: image_bytes(64, 48, "PNG")[:-30]),
    "gif": ("anim.gif", lambda: encoded("GIF")),
    "gif-named-jpg": ("anim.jpg", lambda: encoded("GIF")),
    "bmp": ("old.bmp", lambda: encoded("BMP")),
    "tiff": ("scan.jpg", lambda: encoded("TIFF")),
    "empty": ("empty.jpg", lambda: b""),
}
EXPECTED: dict[str, tuple[type[InvalidInputError], str]] = {
    "text-named-jpg": (UnsupportedFormatError, "not a supported image"),
    "html-named-png": (UnsupportedFormatError, "not a supported image"),
    "truncated-jpeg": (UnreadableInputError, "JPG file is truncated"),
    "truncated-png": (UnreadableInputError, "PNG file is truncated"),
    "gif": (UnsupportedFormatError, "gif is not accepted"),
    "gif-named-jpg": (UnsupportedFormatError, "gif is not accepted"),
    "bmp": (UnsupportedFormatError, "bmp is not accepted"),
    "tiff": (UnsupportedFormatError, "tiff is not accepted"),
    "empty": (UnreadableInputError, "empty"),
}


def assert_nothing_sent(sim: SimulatorServer) -> None:
    assert uploads(sim) == []
    assert list(sim.state.requests) == []  # not even a balance check
    assert sim.state.jobs == {} and sim.state.ledger == []


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_upload(
    case: str, api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    name, content = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(content())
    # the list of local files keeps only media extensions: submit the path directly
    error, needle = EXPECTED[case]
    with pytest.raises(error) as info:
        client.submit(str(path), "upscale", {"scale": 2})
    assert needle in str(info.value)
    assert str(path) in str(info.value)  # the message names the file
    assert info.value.source == str(path)
    assert_nothing_sent(sim)


def test_webp_is_accepted_by_the_open_api_only(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    src = make_image("pic.webp", 24, 16)
    web = client_factory(sim, "web")
    with pytest.raises(UnsupportedFormatError, match="webp is not accepted by the web API") as info:
        web.submit(str(src), "upscale")
    assert "JPG or PNG" in (info.value.hint or "")
    assert_nothing_sent(sim)
    cloud = client_factory(sim, "open")
    job = cloud.wait(cloud.submit(str(src), "upscale", {"scale": 2}).id, poll_interval=0.05, timeout=20)
    with Image.open(cloud.download(job, str(tmp_path / "out.jpg"))) as img:
        assert img.size == (48, 32)


def test_over_10_mb_on_the_web_api(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], tmp_path: Path
) -> None:
    """A real noise PNG just over the web API's 10 MB: refused locally, still fine for the Open API."""
    path = tmp_path / "noise.png"
    Image.frombytes("RGB", (1900, 1900), os.urandom(1900 * 1900 * 3)).save(path, compress_level=0)
    assert path.stat().st_size > 10 * 1024 * 1024
    with pytest.raises(FileTooLargeError, match="10 MB limit of the web API"):
        client_factory(sim, "web").submit(str(path), "upscale")
    assert_nothing_sent(sim)
    info = check_input(str(path), path.stat().st_size, "image", "open")
    assert (info.format, info.width, info.height) == ("png", 1900, 1900)


def _web_limit(monkeypatch: pytest.MonkeyPatch, **limits: int) -> None:
    """The web API's capabilities with other input limits (what ``check_input`` reads)."""
    monkeypatch.setitem(CAPABILITIES, "web", dataclasses.replace(CAPABILITIES["web"], **limits))


def test_web_size_limit_constant_is_what_is_checked(
    monkeypatch: pytest.MonkeyPatch,
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    src = make_image("small.jpg", 32, 24)
    _web_limit(monkeypatch, max_image_bytes=src.stat().st_size - 1)
    with pytest.raises(FileTooLargeError, match=f"{src.stat().st_size} bytes is over"):
        client_factory(sim, "web").submit(str(src), "upscale")
    assert_nothing_sent(sim)


def test_over_34_megapixels_on_the_web_api(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], tmp_path: Path
) -> None:
    path = tmp_path / "huge.png"
    Image.new("L", (6000, 6000), 200).save(path)  # 36 MP, but a small file
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(TooManyPixelsError, match=r"6000x6000 is 36\.0 MP, over the 34 MP limit"):
        client_factory(sim, "web").submit(str(path), "upscale")
    assert_nothing_sent(sim)
    assert check_input(str(path), path.stat().st_size, "image", "open").width == 6000  # no MP limit there


def test_pixel_limit_constant_is_what_is_checked(
    monkeypatch: pytest.MonkeyPatch,
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    _web_limit(monkeypatch, max_image_pixels=32 * 24 - 1)
    with pytest.raises(TooManyPixelsError, match="32x24"):
        client_factory(sim, "web").submit(str(make_image("px.jpg", 32, 24)), "upscale")
    assert_nothing_sent(sim)


def test_video_to_an_image_tool(
    api: str, sim: SimulatorServer, client: VanceClient, test_video: Path
) -> None:
    with pytest.raises(MediaMismatchError, match="mp4 video but the tool takes images"):
        client.submit(str(test_video), "upscale")
    assert_nothing_sent(sim)


def test_image_to_a_video_tool(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], make_image: Callable[..., Path]
) -> None:
    with pytest.raises(MediaMismatchError, match="jpg image but the tool takes videos"):
        client_factory(sim, "open").submit(
            str(make_image("still.jpg", 16, 16)), "video_upscale", {"scale": 2}
        )
    assert_nothing_sent(sim)


def test_missing_file(api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ghost.jpg"
    with pytest.raises(UnreadableInputError, match="does not exist") as info:
        client.submit(str(missing), "upscale")
    assert str(missing) in str(info.value)
    assert_nothing_sent(sim)


def test_invalid_config_is_refused_before_upload(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path]
) -> None:
    with pytest.raises(InvalidInputError, match="scale=3"):
        client.submit(str(make_image("ok.jpg", 16, 16)), "upscale", {"scale": 3})
    assert_nothing_sent(sim)


def test_a_jpeg_with_a_png_name_is_read_by_its_content(api: str, client: VanceClient, tmp_path: Path) -> None:
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(image_bytes(20, 10, "JPEG"))
    job = client.wait(client.submit(str(path), "upscale").id, poll_interval=0.05, timeout=20)
    with Image.open(client.download(job, str(tmp_path / "out" / "x.jpg"))) as img:
        assert img.size == (40, 20)


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        (encoded("JPEG"), "jpg"),
        (encoded("PNG"), "png"),
        (encoded("WEBP"), "webp"),
        (encoded("GIF"), "gif"),
        (encoded("BMP"), "bmp"),
        (encoded("TIFF"), "tiff"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00", "mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00", "mov"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        (b"\x1a\x45\xdf\xa3\x01\x00\x00\x00webm", "webm"),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_by_magic_bytes(content: bytes, fmt: str | None) -> None:
    assert sniff(content[:64]) == fmt


def test_check_input_describes_a_good_image(make_image: Callable[..., Path]) -> None:
    src = make_image("good.png", 33, 21)
    info = check_input(str(src), src.stat().st_size, "image", "web")
    assert (info.format, info.media, info.width, info.height, info.size) == (
        "png",
        "image",
        33,
        21,
        src.stat().st_size,
    )
