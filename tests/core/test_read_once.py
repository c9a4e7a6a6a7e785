"""Each input byte is read from storage once on a batch's happy path: planning reads a header
(one small ranged read), the upload's reader checks the structure and hashes as the bytes go.
A truncated or corrupt input is still refused before anything is paid for: its upload is
aborted before its last bytes go (no job is created, nothing is charged).

Bytes read are counted by an instrumented fsspec store (every ``read`` and ``cat_file``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from tests.conftest import OPEN_KEY
from tests.core.helpers import charges, created_jobs, uploads
from vance_provider.core import AsyncVanceClient, BatchSpec, VanceClient
from vance_provider.core.api.errors import UnreadableInputError
from vance_provider.core.inputs import check_input
from vance_provider.core.media_check import CheckedReader, Corrupt, structure_for
from vance_provider.core.transport.download import SMALL_SOURCE
from vance_provider.core.vendors.base import UPLOAD_READ
from vance_provider.sim import SimulatorServer

READS: Counter[str] = Counter()  # path -> bytes the store handed out


class _CountedFile:
    def __init__(self, fh: Any, path: str) -> None:
        self._fh, self._path = fh, path

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        READS[self._path] += len(data)
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


class CountedFS(MemoryFileSystem):
    """An in-memory store that counts the bytes read of each file (as an object store's egress)."""

    protocol = "counted"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return str(MemoryFileSystem._strip_protocol(path.removeprefix("counted://")))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        fh = super()._open(path, mode, **kwargs)
        return _CountedFile(fh, self._strip_protocol(path)) if "r" in mode else fh

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        data = super().cat_file(path, start=start, end=end, **kwargs)
        READS[self._strip_protocol(path)] += len(data)
        return bytes(data)


fsspec.register_implementation("counted", CountedFS, clobber=True)


def noise(fmt: str, width: int = 1200, height: int = 900) -> bytes:
    """By default an image bigger than SMALL_SOURCE (noise hardly compresses): uploaded as a
    streamed file."""
    buf = io.BytesIO()
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
    data = buf.getvalue()
    assert len(data) > SMALL_SOURCE or width * height < 1e6
    return data


@pytest.fixture
def store(tmp_path: Path) -> Callable[[dict[str, bytes]], str]:
    """``store(files)``: the files put on the counted store, under a fresh prefix; READS cleared."""
    prefix = f"counted://in-{tmp_path.name}"

    def put(files: dict[str, bytes]) -> str:
        fs = CountedFS()
        for name, data in files.items():
            fs.pipe_file(f"{prefix}/{name}", data)
        READS.clear()
        return prefix

    yield put
    if CountedFS().exists(prefix):
        CountedFS().rm(prefix, recursive=True)


def _run(client: VanceClient, source: str, out: Path, **kw: Any) -> Any:
    return client.run_batch(
        BatchSpec(source, str(out), "upscale", {"scale": 2}, poll_interval=0.05, on_failure="continue", **kw)
    )


def test_each_input_byte_is_read_once_and_its_sha256_recorded(
    api: str, sim: SimulatorServer, client: VanceClient, store: Callable[..., str], tmp_path: Path
) -> None:
    files = {"a.jpg": noise("JPEG"), "b.png": noise("PNG"), "c.jpg": noise("JPEG", 1400, 800)}
    source = store(files)
    result = _run(client, source, tmp_path / "out")
    assert result.done == 3
    total = sum(len(d) for d in files.values())
    read = sum(READS.values())
    assert read <= 1.1 * total, f"read {read} bytes of {total}"
    for name, data in files.items():  # every byte was read (hashed and checked by the upload)
        assert len(data) <= READS[CountedFS._strip_protocol(f"{source}/{name}")] <= 1.1 * len(data)
    manifest = json.loads((tmp_path / "out" / "_vance_manifest.json").read_text())
    digests = {Path(i["source"]).name: i.get("input_sha256") for i in manifest["items"]}
    assert digests == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


def _cut(data: bytes) -> bytes:
    return data[: int(len(data) * 0.8)]  # the header intact, the end missing


def _flipped_crc(data: bytes) -> bytes:
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x55  # inside the image data: its chunk's CRC no longer matches
    return bytes(bad)


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("cut.jpg", lambda: _cut(noise("JPEG")), "JPG file is truncated or corrupt"),
        ("cut.png", lambda: _cut(noise("PNG")), "PNG file is truncated or corrupt"),
        ("crc.png", lambda: _flipped_crc(noise("PNG")), "CRC"),
    ],
)
def test_a_bad_input_found_while_uploading_is_refused_before_any_charge(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    store: Callable[..., str],
    tmp_path: Path,
    name: str,
    make: Callable[[], bytes],
    words: str,
) -> None:
    bad = make()
    source = store({"good.jpg": noise("JPEG"), name: bad})
    result = _run(client, source, tmp_path / "out")
    by_name = {Path(i.source).name: i for i in result.items}
    assert by_name["good.jpg"].state == "done"
    failed = by_name[name]
    assert failed.state == "failed" and failed.error_code == "UnreadableInputError"
    assert words in (failed.error or "") and name in (failed.error or "")
    # The bad input's header passed planning: it was refused by the upload's reader, which
    # read it once, and no job exists for it; only the good input was charged.
    assert READS[CountedFS._strip_protocol(f"{source}/{name}")] <= 1.1 * len(bad)
    assert len(created_jobs(sim)) == 1 and len(charges(sim)) == 1
    if api == "web":  # the aborted upload left no uid: one upload and one transform, the good one's
        assert [r.upload for r in uploads(sim) if r.path.endswith("/transform")] != []
        assert sum(1 for r in uploads(sim) if r.path.endswith("/upload") and r.upload) == 1


def test_a_cache_enabled_batch_hashes_at_planning_and_still_checks_while_uploading(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    store: Callable[..., str],
    tmp_path: Path,
) -> None:
    """The cache is looked up before a job: its key needs the SHA-256, so such a batch reads its
    inputs twice (planning, then upload); a second batch is served from the cache."""
    client = client_factory(sim, "open")
    files = {"a.jpg": noise("JPEG"), "b.png": noise("PNG")}
    source = store(files)
    cache = str(tmp_path / "cache")
    first = _run(client, source, tmp_path / "out1", cache=cache)
    assert first.done == 2
    assert sum(READS.values()) <= 2.1 * sum(len(d) for d in files.values())
    READS.clear()
    second = _run(client, source, tmp_path / "out2", cache=cache)
    assert second.done == 2 and all(i.cached for i in second.items)
    assert len(created_jobs(sim)) == 2  # the second batch created none


def test_a_single_submit_still_checks_the_whole_file_before_sending_anything(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], tmp_path: Path
) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_cut(noise("JPEG")))
    with pytest.raises(UnreadableInputError, match="JPG file is truncated"):
        client_factory(sim, "open").submit(str(path), "upscale", {"scale": 2})
    assert uploads(sim) == [] and sim.state.ledger == []


def test_planning_reads_only_the_header(store: Callable[..., str]) -> None:
    data = noise("JPEG")
    source = store({"a.jpg": data})
    info = check_input(f"{source}/a.jpg", len(data), "image", "open", whole=False)
    assert (info.format, info.width, info.height, info.sha256) == ("jpg", 1200, 900, None)
    assert sum(READS.values()) <= 64 * 1024
    READS.clear()
    info = check_input(f"{source}/a.jpg", len(data), "image", "open", want_sha256=True)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert sum(READS.values()) == len(data)  # hashed and checked in one read


def test_the_reader_raises_before_the_last_bytes_go() -> None:
    data = _cut(noise("JPEG"))
    reader = CheckedReader(io.BytesIO(data), "x.jpg")
    handed = 0
    with pytest.raises(UnreadableInputError, match="truncated"):
        while chunk := reader.read(64 * 1024):
            handed += len(chunk)
    assert handed < len(data)  # the last chunk was never handed to the upload
    seen: list[str] = []
    good = noise("PNG")
    reader = CheckedReader(io.BytesIO(good), "y.png", lambda url, digest: seen.append(digest))
    while reader.read(64 * 1024):
        pass
    assert seen == [hashlib.sha256(good).hexdigest()]


def test_a_second_attempt_reads_the_file_again_as_a_new_pass() -> None:
    """An upload retried seeks back to the start: its reader judges and hashes the bytes afresh
    (a re-read of bytes already judged is not fed twice), and tells the digest once per whole read."""
    good = noise("PNG")
    seen: list[str] = []
    reader = CheckedReader(io.BytesIO(good), "r.png", lambda url, digest: seen.append(digest))
    with reader:
        assert reader.read(1000) == good[:1000] and reader.tell() == 1000
        assert reader.seek(500) == 500 and reader.read(700) == good[500:1200]  # overlap: judged once
        assert reader.seek(0) == 0  # a new attempt
        handed = b""
        while chunk := reader.read(64 * 1024):
            handed += chunk
        assert handed == good and seen == [hashlib.sha256(good).hexdigest()]
    assert reader.closed


async def test_a_multipart_upload_reads_its_file_256_kib_at_a_time() -> None:
    """httpx reads a file part 64 KiB at a time; an upload's part is read in 256 KiB pieces (each
    piece goes down to the socket on its own), and the body carries the file whole."""
    data = os.urandom(1_000_000)
    sizes: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            sizes.append(-1 if size is None else size)
            return super().read(size)

    bodies: list[bytes] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(await request.aread())
        return httpx.Response(200, json={})

    transport = httpx.MockTransport(answer)
    async with AsyncVanceClient(OPEN_KEY, base_url="http://vance.test", transport=transport) as client:
        await client.backend.post_file(
            "http://vance.test/jobs", {"tool": "x"}, {"image": ("a.jpg", Recording(data))}
        )
    assert sizes and set(sizes) == {UPLOAD_READ} and UPLOAD_READ == 256 * 1024
    assert len(bodies) == 1 and bodies[0].count(data) == 1


def _mp4(test_video: Path) -> bytes:
    return test_video.read_bytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "WEBP-lossless", "JPEG-progressive", "WEBP-alpha"])
@pytest.mark.parametrize("chunk", [1, 5, 4096, 1 << 30])
def test_structures_whole_and_cut(fmt: str, chunk: int) -> None:
    base, _, variant = fmt.partition("-")
    buf = io.BytesIO()
    mode = "RGBA" if variant == "alpha" else "RGB"
    img = Image.frombytes(mode, (120, 80), os.urandom(120 * 80 * len(mode)))
    img.save(
        buf,
        base,
        **({"lossless": True} if variant == "lossless" else {}),
        progressive=variant == "progressive",
    )
    data = buf.getvalue()
    name = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[base]
    check = structure_for(name)
    assert check is not None
    for i in range(0, len(data), chunk):
        check.feed(data[i : i + chunk])
    check.finish()
    assert check.dimensions == (120, 80)
    for cut in (len(data) - 1, len(data) // 2, 40):
        check = structure_for(name)
        assert check is not None
        with pytest.raises(Corrupt):
            for i in range(0, cut, chunk):
                check.feed(data[i : min(cut, i + chunk)])
            check.finish()


def test_bytes_after_the_end_are_not_judged(test_video: Path) -> None:
    for name, data in [
        ("jpg", noise("JPEG", 300, 200) + b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000)),  # Motion Photo
        ("png", noise("PNG", 600, 600) + b"\n"),  # a stray byte after IEND
        ("mp4", _mp4(test_video)),
    ]:
        check = structure_for(name)
        assert check is not None
        check.feed(data)
        check.finish()
    check = structure_for("mp4")
    assert check is not None
    check.feed(_mp4(test_video)[:-100])
    with pytest.raises(Corrupt, match="cut short"):
        check.finish()


def test_a_cut_video_is_refused_while_uploading_and_never_becomes_a_job(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    store: Callable[..., str],
    test_video: Path,
    tmp_path: Path,
) -> None:
    """Open API video: the PUT is aborted before its last chunk (the last box is cut short), no
    job is created for it; the whole video goes through and its SHA-256 is recorded."""
    client = client_factory(sim, "open")
    whole = test_video.read_bytes()
    source = store({"whole.mp4": whole, "cut.mp4": whole[: len(whole) - 200]})
    result = client.run_batch(
        BatchSpec(source, str(tmp_path / "out"), "video_upscale", {"scale": 2}, poll_interval=0.05)
    )
    by_name = {Path(i.source).name: i for i in result.items}
    assert by_name["whole.mp4"].state == "done"
    assert by_name["cut.mp4"].state == "failed" and "MP4 file is truncated" in (
        by_name["cut.mp4"].error or ""
    )
    assert len(created_jobs(sim)) == 1 and len(charges(sim)) == 1
    manifest = json.loads((tmp_path / "out" / "_vance_manifest.json").read_text())
    digests = {Path(i["source"]).name: i.get("input_sha256") for i in manifest["items"]}
    assert digests["whole.mp4"] == hashlib.sha256(whole).hexdigest()
