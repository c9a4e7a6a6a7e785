"""VanceAIResource passes ``api`` through to the core client; it builds a VisionCraft client once
its validator accepts the value (see docs/visioncraft.md for the one-line change)."""

from __future__ import annotations

import pytest

from tests.visioncraft.conftest import FREE, posts
from vance_provider.sim import SimulatorServer

pytest.importorskip("dagster")


def test_resource_builds_a_visioncraft_client(sim: SimulatorServer) -> None:
    from dagster_vance.resources import VanceAIResource

    try:
        resource = VanceAIResource(api_token=FREE, api="visioncraft", base_url=sim.base_url)
    except Exception as exc:  # pydantic's ValidationError: the validator lists only auto/web/open
        pytest.skip(f"VanceAIResource does not accept api='visioncraft' yet: {exc}")
    with resource.get_client() as client:
        assert client.api == "visioncraft"
        assert "sdxl-turbo" in client.visioncraft.options("models_xl")
    assert posts(sim) == []
