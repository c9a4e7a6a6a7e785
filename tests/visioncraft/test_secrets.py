"""The VisionCraft key travels in the JSON body only: never in a URL, a log line, a repr or a job."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.visioncraft.conftest import PREMIUM
from vance_provider.core import AuthenticationError, BatchSpec, VanceClient
from vance_provider.sim import SimulatorServer


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # Through caplog only, the root ("") too: it puts each level back after the test.
    for name in ("", "httpx", "httpcore", "vance_provider", "fsspec"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_the_key_stays_in_the_body(
    sim: SimulatorServer,
    vc_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    token = PREMIUM
    client = vc_factory(token)
    src = str(make_image("in.jpg"))
    jobs = [
        client.visioncraft.generate("x", str(tmp_path / "a"), model="anything_V5", sampler="Euler")[0],
        client.visioncraft.generate_xl("x", str(tmp_path / "b"), width=64, height=64)[0],
        client.visioncraft.text_to_gif("x", str(tmp_path / "c"), sampler="Euler")[0],
        client.visioncraft.image_to_video(src, str(tmp_path / "d"))[0],
        client.enhance(src, str(tmp_path / "e"), "upscale")[0],
        client.enhance(src, str(tmp_path / "f"), "img2img", {"prompt": "x"})[0],
    ]
    client.visioncraft.llm("mistral-7b-instruct", [{"role": "user", "content": "hi"}])
    client.visioncraft.premium_llm("gpt-3-5-turbo", "hi")
    result = client.run_batch(BatchSpec(source=src, destination=str(tmp_path / "batch"), tool="upscale"))
    assert result.done == 1
    with pytest.raises(AuthenticationError) as info:
        vc_factory(token + "x").visioncraft.text_to_gif("x", str(tmp_path / "g"), sampler="Euler")

    assert len(sim.state.requests) > 20
    for record in sim.state.requests:
        assert token not in record.url and not record.authorization
    logs = "\n".join(r.getMessage() + repr(r.args) for r in debug_logs.records)
    assert "HTTP Request: POST" in logs  # the DEBUG logs were captured
    assert token not in logs and "***" not in logs  # nothing even tried to log the key
    for job in jobs:
        text = repr(job) + json.dumps(job.raw) + json.dumps(job.to_xcom())
        assert token not in text
    assert token not in repr(client) + repr(client.aio) + repr(client.aio.backend)
    assert token not in str(info.value)
    manifest = Path(result.manifest).read_text()
    assert token not in manifest
