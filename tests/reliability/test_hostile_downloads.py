"""Downloads that never end or never stop growing: a per-download deadline, a minimum-throughput
(stall) rule and a size limit stop them with a typed error, and nothing is kept.

The simulator's ``drip`` fault sends one byte every few seconds, its ``oversize`` fault goes on
past the result (300 MB by default). The client's bounds here are tiny (a stall rule of 1 KB/s over
0.5 s), so each test ends quickly; they assert on the error and the request log, not on time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core import RetryPolicy, VanceClient
from vance_provider.core.api import errors as E
from vance_provider.core.secrets import Secret
from vance_provider.core.transport.download import DownloadOptions
from vance_provider.core.vendors import OpenApiBackend, base
from vance_provider.sim import Faults, SimulatorServer

TOKENS = {"web": WEB_TOKEN, "open": OPEN_KEY}
DOWNLOAD_CALL = {"web": "download", "open": "result_file"}
FAST = RetryPolicy(max_attempts=2, initial=0.01, max_delay=0.02)
STALL_RULE = DownloadOptions(min_rate=1024, stall_window=0.5, deadline=60)


class CountingWriter(base.AtomicWriter):
    """Records every writer opened for a download, and what it wrote."""

    opened: list[CountingWriter] = []

    def open(self) -> CountingWriter:
        CountingWriter.opened.append(self)
        return super().open()  # type: ignore[return-value]


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[CountingWriter]:
    CountingWriter.opened = []
    monkeypatch.setattr(base, "AtomicWriter", CountingWriter)
    return CountingWriter.opened


def finished_job(
    sim_factory: Callable[..., SimulatorServer], api: str, make_image: Callable[..., Path], **knobs: Any
) -> tuple[SimulatorServer, VanceClient, Any]:
    """A simulator with ``knobs``, a client on it, and a succeeded job (nothing downloaded yet)."""
    downloads = knobs.pop("downloads", STALL_RULE)
    sim = sim_factory(**knobs)
    client = VanceClient(TOKENS[api], base_url=sim.base_url, retry=FAST, timeout=10, downloads=downloads)
    job = client.submit(str(make_image("in.jpg", 40, 30)), "upscale", {"scale": 2})
    job = client.wait(job.id, poll_interval=0.05, timeout=30)
    assert job.size
    return sim, client, job


def no_files(folder: Path) -> bool:
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def test_a_slow_drip_fails_as_stalled_and_keeps_nothing(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """One byte every 5 s never trips a read timeout; the stall rule stops every attempt."""
    sim, client, job = finished_job(sim_factory, api, make_image, faults=Faults(drip=1.0, drip_interval=5.0))
    with client, pytest.raises(E.DownloadStalledError) as info:
        client.download(job, str(tmp_path / "out" / "result"))
    assert type(info.value) is E.DownloadStalledError and info.value.retryable
    assert "stalled" in str(info.value) and "bytes/s" in str(info.value)
    assert client.request_counts[DOWNLOAD_CALL[api]] == FAST.max_attempts  # retried, then given up
    assert sim.state.faults_injected["drip"] == FAST.max_attempts
    assert no_files(tmp_path / "out")


def test_the_deadline_bounds_the_whole_download(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """With the stall rule off, the per-download deadline still ends it, and it is not retried."""
    sim, client, job = finished_job(
        sim_factory,
        api,
        make_image,
        faults=Faults(drip=1.0, drip_interval=5.0),
        downloads=DownloadOptions(min_rate=0, deadline=0.5),
    )
    with client, pytest.raises(E.DownloadTimeoutError) as info:
        client.download(job, str(tmp_path / "out" / "result"))
    assert not info.value.retryable and "deadline" in str(info.value)
    assert client.request_counts[DOWNLOAD_CALL[api]] == 1
    assert sim.state.faults_injected["drip"] == 1
    assert no_files(tmp_path / "out")


def test_an_announced_oversize_is_refused_before_writing(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    make_image: Callable[..., Path],
    tmp_path: Path,
    writers: list[CountingWriter],
) -> None:
    """``Content-Length`` says 300 MB for a result the job reported at a few KB: stop at once."""
    sim, client, job = finished_job(sim_factory, api, make_image, faults=Faults(oversize=1.0))
    with client, pytest.raises(E.ResultTooLargeError) as info:
        client.download(job, str(tmp_path / "out" / "result"))
    assert not info.value.retryable
    assert f"announces {300 * 1024 * 1024} bytes" in str(info.value) and str(job.size) in str(info.value)
    assert client.request_counts[DOWNLOAD_CALL[api]] == 1  # not fetched again
    assert sim.state.faults_injected["oversize"] == 1
    assert writers == []  # nothing was opened for writing
    assert no_files(tmp_path / "out")


def test_an_unannounced_oversize_is_cut_while_streaming(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    make_image: Callable[..., Path],
    tmp_path: Path,
    writers: list[CountingWriter],
) -> None:
    """No ``Content-Length`` (chunked): the bytes are counted as they arrive, and the download
    stops as soon as they pass the job's size; not a byte past it is written."""
    sim, client, job = finished_job(
        sim_factory, api, make_image, faults=Faults(oversize=1.0, oversize_announced=False)
    )
    with client, pytest.raises(E.ResultTooLargeError) as info:
        client.download(job, str(tmp_path / "out" / "result"))
    assert f"past {job.size} bytes" in str(info.value)
    assert client.request_counts[DOWNLOAD_CALL[api]] == 1
    assert sim.state.faults_injected["oversize"] == 1
    # A result smaller than a write chunk is cut before the target is even opened.
    assert len(writers) <= 1 and all(w.written <= job.size for w in writers)
    assert no_files(tmp_path / "out")


def test_a_batch_records_the_hostile_download_per_item(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """In a batch the item keeps its job (a rerun fetches the result again without paying) and
    says why it was not stored; the batch itself completes."""
    from vance_provider.core import BatchSpec

    sim = sim_factory(faults=Faults(oversize=1.0))
    for n in range(2):
        make_image(f"in/p{n}.jpg", 30 + n, 20)
    with VanceClient(TOKENS[api], base_url=sim.base_url, retry=FAST, downloads=STALL_RULE) as client:
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
    assert result.done == 0 and len(result.items) == 2
    for item in result.items:
        assert item.job_id and "result not stored" in (item.error or "")
        assert item.error_code == "result_too_large"
    assert sim.state.double_charges() == []


def test_max_bytes_limits_a_result_of_unknown_size(tmp_path: Path) -> None:
    """When the service reports no size (VisionCraft's links), ``max_bytes`` is the limit."""
    body = b"\x89PNG\r\n\x1a\n" + bytes(5000)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "image/png"})

    backend = OpenApiBackend(
        Secret("sk_live_under_test"),
        base_url=None,
        timeout=httpx.Timeout(5),
        retry=FAST,
        max_connections=1,
        transport=httpx.MockTransport(handler),
        caller="test",
    )
    backend.downloads = DownloadOptions(max_bytes=1000)

    async def run() -> str:
        try:
            return await backend.stream_to(
                "result_file",
                lambda: backend.http.stream("GET", "https://files.example/r"),
                str(tmp_path / "r"),
                None,
                lambda r: "png",
                gated=False,
            )
        finally:
            await backend.aclose()

    import asyncio

    with pytest.raises(E.ResultTooLargeError) as info:
        asyncio.run(run())
    assert "DownloadOptions.max_bytes" in str(info.value)
    assert no_files(tmp_path)


@pytest.mark.parametrize(
    "options",
    [{"deadline": -1}, {"min_rate": -5}, {"max_bytes": -1}, {"min_rate": 10, "stall_window": 0}],
)
def test_download_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(E.ConfigurationError):
        DownloadOptions(**options)
    with pytest.raises(E.ConfigurationError):
        VanceClient(WEB_TOKEN, downloads={"no_such_option": 1})
