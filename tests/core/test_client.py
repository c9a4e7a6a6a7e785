"""The client over both APIs against the simulator: round trips, results, balance, base URLs, reprs."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN
from tests.core.conftest import TOKENS, async_client, image_size
from tests.core.helpers import count_status, created_jobs
from vance_provider.core import AsyncVanceClient, JobStatus, VanceClient, detect_api
from vance_provider.core.api.errors import ConfigurationError, JobFailedError, WaitTimeoutError
from vance_provider.core.client import normalize_base_url
from vance_provider.sim import Account, Faults, SimulatorServer


@pytest.mark.parametrize("scale", [2, 4])
def test_sync_round_trip_output_is_input_times_scale(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    scale: int,
) -> None:
    src = make_image("photo.jpg", 32, 24)
    job = client.submit(str(src), "upscale", {"scale": scale})
    assert job.api == api and job.id and job.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
    done = client.wait(job.id, poll_interval=0.05, timeout=20)
    assert done.status is JobStatus.SUCCEEDED and done.id == job.id
    out = client.download(done, str(tmp_path / "out" / "photo_up.jpg"))
    assert out == str(tmp_path / "out" / "photo_up.jpg")
    assert image_size(out) == (32 * scale, 24 * scale)
    assert created_jobs(sim) == [job.id]
    # The calls are counted per kind, one for each request the service received.
    counts = client.request_counts
    assert sum(counts.values()) == len(sim.state.requests)
    assert counts.pop("get_job" if api == "open" else "progress") >= 1  # as many polls as it took
    assert counts == (
        {"create_job": 1, "result_file": 1} if api == "open" else {"upload": 1, "transform": 1, "download": 1}
    )


async def test_async_round_trip(
    api: str, sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = make_image("a.png", 30, 20)
    async with async_client(sim, api) as client:
        assert client.api == api
        job = await client.submit(str(src), "upscale", {"scale": 4})
        job = await client.wait(job.id, poll_interval=0.05, timeout=20)
        out = await client.download(job, str(tmp_path / "a_x4"))  # no extension: the result's type picks one
        assert Path(out).suffix in (".jpg", ".png")
        assert image_size(out) == (120, 80)
        job2, out2 = await client.enhance(
            str(src), str(tmp_path / "b.jpg"), "upscale", {"scale": 2}, poll_interval=0.05, timeout=20
        )
        assert job2.status is JobStatus.SUCCEEDED and image_size(out2) == (60, 40)
        # many jobs at once through the one client
        jobs = await asyncio.gather(
            *(
                client.submit(str(make_image(f"m{i}.jpg", 16 + i, 16)), "upscale", {"scale": 2})
                for i in range(3)
            )
        )
        finished = await client.wait_all([j.id for j in jobs], poll_interval=0.05, timeout=20)
        assert [j.status for j in finished] == [JobStatus.SUCCEEDED] * 3
        assert [j.id for j in finished] == [j.id for j in jobs]


def test_remove_bg_gives_png_with_alpha(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = make_image("portrait.jpg", 40, 30)
    job = client.wait(client.submit(str(src), "remove_bg").id, poll_interval=0.05, timeout=20)
    out = client.download(job, str(tmp_path / "cutout"))
    assert out.endswith(".png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGBA" and img.size == (40, 30)
        alpha = img.getchannel("A").getextrema()
        assert alpha == (0, 255)  # a real cut-out: some pixels transparent, some opaque


def test_video_upscale_open_api(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], test_video: Path, tmp_path: Path
) -> None:
    import av

    client = client_factory(sim, "open")
    job = client.submit(str(test_video), "video_upscale", {"scale": 2})
    assert job.media == "video"
    job = client.wait(job.id, poll_interval=0.05, timeout=60)
    out = client.download(job, str(tmp_path / "clip_x2"))
    assert out.endswith(".mp4")
    with av.open(out) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 96)
        frames = sum(1 for _ in container.decode(stream))
    assert frames >= 5
    # two-phase upload: a ticket with the key, then one raw PUT without it
    puts = [r for r in sim.state.requests if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].path.startswith("/storage/uploads/") and not puts[0].authorization
    assert any(r.path == "/api/v1/uploads" and r.authorization for r in sim.state.requests)
    # the signed result URL is fetched without the key too
    assert all(not r.authorization for r in sim.state.requests if r.path.startswith("/storage/"))


def test_web_api_old_enlarge_module_round_trip(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    client = client_factory(sim, "web")
    job = client.wait(
        client.submit(str(make_image("e.jpg", 20, 10)), "enlarge", {"scale": "4x"}).id,
        poll_interval=0.05,
        timeout=20,
    )
    assert image_size(client.download(job, str(tmp_path / "e.jpg"))) == (80, 40)


def test_web_synchronous_transform(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(web_sync_wait=2.0)
    client = client_factory(sim, "web")
    job = client.submit(str(make_image("s.jpg", 16, 16)), "upscale", {"scale": 2})
    assert job.status is JobStatus.SUCCEEDED and job.raw_status == "finish"  # transform answered "finish"
    assert image_size(client.download(job, str(tmp_path / "s.jpg"))) == (32, 32)


def test_open_result_not_ready_is_retried(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(result_sync_window=0.3)
    client = client_factory(sim, "open")
    job = client.wait(
        client.submit(str(make_image("r.jpg", 16, 16)), "upscale").id, poll_interval=0.05, timeout=20
    )
    # A job known only by its id (no signed link from its terminal answer) asks /result.
    out = client.download(dataclasses.replace(job, result_url=None), str(tmp_path / "r.jpg"))
    assert image_size(out) == (32, 32)
    assert count_status(sim, 202, "/api/v1/jobs/") >= 1  # 202 result_not_ready was read as "not yet"


def test_open_download_uses_the_terminal_answers_signed_link(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    client = client_factory(sim, "open")
    job = client.wait(client.submit(str(make_image("s.jpg", 16, 16)), "upscale").id, poll_interval=0.05)
    assert job.result_url and "result_url" not in repr(job) and "result_url" not in job.to_xcom()
    out = client.download(job, str(tmp_path / "s.jpg"))
    assert image_size(out) == (32, 32)
    assert not [r for r in sim.state.requests if r.path.endswith("/result")]  # no extra round trip


def test_failed_job_raises_and_has_no_result(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(fail_job=1.0))
    client = client_factory(sim, api)
    job = client.submit(str(make_image("f.jpg", 16, 16)), "upscale")
    with pytest.raises(JobFailedError) as info:
        client.wait(job.id, poll_interval=0.05, timeout=20)
    assert info.value.job_id == job.id
    failed = client.wait(job.id, poll_interval=0.05, timeout=20, raise_on_failure=False)
    assert failed.status is JobStatus.FAILED and failed.error_message
    with pytest.raises(JobFailedError, match="no result"):
        client.download(failed, str(tmp_path / "out" / "f.jpg"))
    assert not (tmp_path / "out").exists()
    assert sim.state.charges() == []  # a failed job costs nothing on either API


def test_wait_timeout(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    sim = sim_factory(time_per_job=5.0)
    client = client_factory(sim, api)
    job = client.submit(str(make_image("slow.jpg", 16, 16)), "upscale")
    with pytest.raises(WaitTimeoutError, match=job.id):
        client.wait(job.id, poll_interval=0.05, timeout=0.3)


@pytest.mark.parametrize("credits", [123.5, 1000.0])
def test_balance(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
    credits: float,
) -> None:
    sim = sim_factory(accounts=[Account(credits=credits)])
    client = client_factory(sim, api)
    before = client.balance()
    assert isinstance(before.available, float) and before.available == credits and before.used == 0.0
    if api == "web":
        assert before.total == credits  # "max_num": "123.500" parsed from a string
    job = client.wait(
        client.submit(str(make_image("b.jpg", 16, 16)), "upscale").id, poll_interval=0.05, timeout=20
    )
    client.download(job, str(tmp_path / "b.jpg"))
    after = client.balance()
    assert after.available == credits - 1 and after.used == 1.0 and after.frozen == 0.0
    assert sim.state.balance() == after.available


def test_api_auto_detection(sim: SimulatorServer) -> None:
    assert detect_api("sk_live_abc") == "open"
    assert detect_api("abc123") == "web"
    assert detect_api("sk_live_abc", "web") == "web"
    assert detect_api("abc", "open") == "open"
    with pytest.raises(ConfigurationError):
        detect_api("abc", "cloud")
    with (
        VanceClient(OPEN_KEY, base_url=sim.base_url, timeout=5) as open_client,
        VanceClient(WEB_TOKEN, base_url=sim.base_url, timeout=5) as web_client,
    ):
        assert open_client.api == "open" and open_client.base_url == sim.open_url
        assert web_client.api == "web" and web_client.base_url == sim.web_url
        assert open_client.balance().available == web_client.balance().available == 1000.0
    assert {r.path for r in sim.state.requests} == {"/api/v1/credits", "/web_api/v1/point"}


@pytest.mark.parametrize(
    ("given", "api", "expected"),
    [
        ("api-service.vanceai.com", "web", "https://api-service.vanceai.com/web_api/v1"),
        ("cloud-vanceai.vanceai.com", "open", "https://cloud-vanceai.vanceai.com/api/v1"),
        ("127.0.0.1:8765", "open", "https://127.0.0.1:8765/api/v1"),
        ("http://127.0.0.1:8765", "web", "http://127.0.0.1:8765/web_api/v1"),
        ("http://127.0.0.1:8765/", "open", "http://127.0.0.1:8765/api/v1"),
        (
            "  https://api-service.vanceai.com/web_api/v1/  ",
            "web",
            "https://api-service.vanceai.com/web_api/v1",
        ),
        ("https://proxy.example.com/vance/api/v1", "open", "https://proxy.example.com/vance/api/v1"),
        (None, "web", None),
        ("", "open", None),
    ],
)
def test_base_url_normalisation(given: str | None, api: str, expected: str | None) -> None:
    assert normalize_base_url(given, api) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://example.com",
        "http://",
        "https://:8080",
        "http://host:port",
        "http://127.0.0.1:99999",
        "://nohost",
        "file:///etc/passwd",
    ],
)
def test_malformed_base_url(bad: str, api: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        normalize_base_url(bad, api)  # type: ignore[arg-type]
    assert "base_url" in str(info.value)
    with pytest.raises(ConfigurationError):
        VanceClient(TOKENS[api], base_url=bad)
    with pytest.raises(ConfigurationError):
        AsyncVanceClient(TOKENS[api], base_url=bad)


def test_a_failed_construction_leaves_no_thread_behind() -> None:
    def loops() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "vance-client-loop" and t.is_alive())

    before = loops()
    for bad in ({"base_url": "ftp://x"}, {"api": "cloud"}, {"base_url": "http://h:99999"}):
        with pytest.raises(ConfigurationError):
            VanceClient(WEB_TOKEN, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        VanceClient("")
    assert loops() == before
    client = VanceClient(WEB_TOKEN)
    assert loops() == before + 1
    client.close()
    assert loops() == before


def test_default_base_urls() -> None:
    with VanceClient(WEB_TOKEN) as web, VanceClient(OPEN_KEY) as cloud:
        assert web.base_url == "https://api-service.vanceai.com/web_api/v1"
        assert cloud.base_url == "https://cloud-vanceai.vanceai.com/api/v1"


def test_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="token"):
        VanceClient("")


def test_host_only_base_url_reaches_the_simulator(api: str, sim: SimulatorServer) -> None:
    with VanceClient(TOKENS[api], base_url=f"http://127.0.0.1:{sim.port}/", timeout=5) as client:
        assert client.balance().available == 1000.0


def test_reprs_never_contain_the_token(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path]
) -> None:
    token = TOKENS[api]
    job = client.wait(
        client.submit(str(make_image("r.jpg", 16, 16)), "upscale").id, poll_interval=0.05, timeout=20
    )
    backend = client.aio.backend
    texts = [
        repr(client),
        str(client),
        repr(client.aio),
        str(client.aio),
        repr(backend),
        str(backend),
        repr(backend.token),
        str(backend.token),
        repr(client.aio._token),
        repr(job),
        str(job.to_xcom()),
        repr(job.raw),
        repr(client.balance()),
    ]
    assert "VanceClient" in texts[0] and sim.base_url in texts[0]
    for text in texts:
        assert token not in text
    assert backend.token.reveal() == token  # only when sending it


async def test_sync_client_inside_a_running_event_loop(api: str, sim: SimulatorServer) -> None:
    """Notebooks run a loop already: the blocking client runs its coroutines on its own loop thread."""
    with VanceClient(TOKENS[api], base_url=sim.base_url, timeout=5) as client:
        assert client.balance().available == 1000.0
        assert asyncio.get_running_loop() is not client._loop.loop
