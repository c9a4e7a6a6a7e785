"""Streaming, atomic, verified downloads: a cut-short result is retried and never published."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from tests.core.conftest import image_size
from vance_provider.core import RetryPolicy, VanceClient
from vance_provider.core.api.errors import DownloadStalledError, TruncatedDownloadError
from vance_provider.core.state.storage import AtomicWriter, write_bytes_atomic
from vance_provider.core.transport import download
from vance_provider.core.transport.download import _Paced
from vance_provider.sim import Faults, SimulatorServer


class FinalNameWatcher:
    """Polls a folder while downloads run and records every size seen under each final name."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen, self._stop = folder, {}, threading.Event()  # type: ignore[var-annotated]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.folder.exists():
                for p in self.folder.iterdir():
                    if not p.name.startswith("."):
                        try:
                            self.seen.setdefault(p.name, set()).add(p.stat().st_size)
                        except FileNotFoundError:
                            pass
            self._stop.wait(0.001)

    def __enter__(self) -> FinalNameWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()


def test_truncated_downloads_are_retried(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(truncate=0.5, seed=2))
    client = client_factory(sim, api)
    out_dir = tmp_path / "out"
    jobs = [
        client.submit(str(make_image(f"t{i}.png", 40 + i, 30)), "upscale", {"scale": 2}) for i in range(2)
    ]
    jobs = client.wait_all([j.id for j in jobs], poll_interval=0.05, timeout=30)
    outputs: list[tuple[str, int]] = []
    with FinalNameWatcher(out_dir) as watcher:
        # a repeated download is free on both APIs: go on until the faults have cut a few short
        while sim.state.faults_injected["truncate"] < 3 and len(outputs) < 40:
            i = len(outputs) % 2
            outputs.append((client.download(jobs[i], str(out_dir / f"r{len(outputs)}.jpg")), i))
    assert sim.state.faults_injected["truncate"] >= 3
    for out, i in outputs:
        with Image.open(out) as img:
            img.load()  # decodes to the last byte
            assert img.size == (2 * (40 + i), 60)
        final = Path(out).stat().st_size
        assert watcher.seen.get(Path(out).name, set()) <= {final}  # never a partial file under the final name
    assert watcher.seen  # the watcher did look
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        Path(o).name for o, _ in outputs
    )  # no .partial
    assert len(sim.state.charges()) == 2  # repeated downloads are not charged again


def test_a_download_cut_short_every_time_fails_and_leaves_nothing(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(truncate=1.0, seed=3))
    client = client_factory(sim, api, retry=RetryPolicy(max_attempts=3, initial=0.01, max_delay=0.02))
    job = client.wait(
        client.submit(str(make_image("a.jpg", 32, 24)), "upscale").id, poll_interval=0.05, timeout=20
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.jpg").write_bytes(b"previous result")
    with pytest.raises(TruncatedDownloadError):
        client.download(job, str(out_dir / "keep.jpg"))
    assert sim.state.faults_injected["truncate"] == 3
    assert [p.name for p in out_dir.iterdir()] == ["keep.jpg"]
    assert (out_dir / "keep.jpg").read_bytes() == b"previous result"  # the old file is untouched


def test_web_result_of_a_synchronous_transform_is_verified(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """transform may answer "finish" at once, without a filesize: a truncation without a
    Content-Length must still be caught (the size comes from progress)."""
    sim = sim_factory(web_sync_wait=2.0, faults=Faults(truncate=1.0, seed=0))
    client = client_factory(sim, "web", retry=RetryPolicy(max_attempts=2, initial=0.01, max_delay=0.02))
    for i in range(4):
        job = client.submit(str(make_image(f"s{i}.png", 40, 30)), "upscale", {"scale": 2})
        assert job.raw_status == "finish" and job.size is None
        try:
            out = client.download(job, str(tmp_path / "out" / f"s{i}.jpg"))
        except TruncatedDownloadError:
            continue  # every attempt was cut short: refused, fine
        with Image.open(out) as img:  # published: then it must be whole
            img.load()
            assert img.size == (80, 60)
    assert sim.state.faults_injected["truncate"] >= 4
    assert not list((tmp_path / "out").glob(".*"))  # no partial file left behind


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_atomic_writer_commit_checks_the_size(protocol: str, tmp_path: Path) -> None:
    url = str(tmp_path / "res" / "out.jpg") if protocol == "file" else "memory://vance-test/res/out.jpg"
    fs, path = fsspec.core.url_to_fs(url)
    writer = AtomicWriter(url).open()
    writer.write(b"x" * 10)
    assert not fs.exists(path)  # nothing under the final name while writing
    assert fs.exists(writer.tmp_path) and writer.tmp_path.rsplit("/", 1)[1].startswith(".")
    with pytest.raises(TruncatedDownloadError, match="10 of 20 bytes"):
        writer.commit(20)
    assert not fs.exists(path) and not fs.exists(writer.tmp_path)
    assert fs.ls(path.rsplit("/", 1)[0]) == []

    good = AtomicWriter(url).open()
    good.write(b"abc")
    assert good.commit(3) == url
    assert fs.cat(path) == b"abc" and not fs.exists(good.tmp_path)

    aborted = AtomicWriter(url).open()
    aborted.write(b"zzz-partial")
    aborted.abort()
    assert fs.cat(path) == b"abc" and not fs.exists(aborted.tmp_path)
    write_bytes_atomic(url, b"new content")
    assert fs.cat(path) == b"new content"
    assert [p.rsplit("/", 1)[1] for p in fs.ls(path.rsplit("/", 1)[0], detail=False)] == ["out.jpg"]
    if protocol == "memory":
        fs.rm("/vance-test", recursive=True)


def test_download_without_extension_takes_the_result_type(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    job = client.wait(
        client.submit(str(make_image("p.png", 16, 16)), "remove_bg").id, poll_interval=0.05, timeout=20
    )
    out = client.download(job, str(tmp_path / "deep" / "er" / "cut"))
    assert out == str(tmp_path / "deep" / "er" / "cut.png") and image_size(out) == (16, 16)


class _Clock:
    """``time.monotonic``, moved by hand: the paced reader's clock and the event loop's alike, so
    a deadline the reader set passes when the clock is moved past it, and only then."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _body(steps: list[tuple[float, bytes]], clock: _Clock) -> AsyncIterator[bytes]:
    for at, chunk in steps:
        clock.now = at
        await asyncio.sleep(0)
        yield chunk


async def _drain(paced: _Paced) -> bytes:
    data = b""
    while chunk := await paced.next():
        data += chunk
    return data


@pytest.mark.parametrize(
    ("steps", "stalls"),
    [
        # 100 s windows at 1 byte/s: the first window gets its 100 bytes; the next chunk comes
        # late in the second window, which is judged from its own start (the first one passed
        # when it ended): no stall, though 110 bytes in 190 s would be under the rate.
        ([(1010.0, b"a" * 100), (1190.0, b"b" * 10)], False),
        # The first window short of its quota, and the next chunk after its end: stalled.
        ([(1010.0, b"a" * 10), (1150.0, b"b" * 100)], True),
        # A quota met, then a second window with too little in it: stalled at its end.
        ([(1010.0, b"a" * 100), (1150.0, b"b"), (1210.0, b"c")], True),
    ],
)
async def test_the_stall_rule_judges_each_window_at_its_end(
    monkeypatch: pytest.MonkeyPatch, steps: list[tuple[float, bytes]], stalls: bool
) -> None:
    clock = _Clock()
    monkeypatch.setattr(download.time, "monotonic", clock)
    paced = _Paced(_body(steps, clock), min_rate=1.0, window=100.0, what="result")
    if stalls:
        with pytest.raises(DownloadStalledError, match="stalled"):
            await _drain(paced)
    else:
        assert await _drain(paced) == b"".join(chunk for _, chunk in steps)


@pytest.mark.parametrize("first", [b"", b"x" * 4096])
async def test_a_read_pending_past_the_rule_is_stopped_and_the_bytes_before_it_kept(first: bytes) -> None:
    """A body that stops sending (its quota met first, or never) ends as stalled; what came
    before was handed over whole."""
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        await gate.wait()  # never set: the server went quiet
        yield b"never"

    paced = _Paced(body(), min_rate=1024.0, window=0.02, what="result")
    got = await paced.next() if first else b""
    assert got == first
    with pytest.raises(DownloadStalledError, match=r"0 bytes in|under the minimum"):
        await paced.next()


async def test_without_a_stall_rule_a_body_is_read_straight_on() -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"ab", b"", b"cd"):
            yield chunk

    paced = _Paced(body(), min_rate=0, window=30.0, what="result")
    assert await paced.read(3) == b"abcd" and await paced.next() == b""
