"""VanceAIResource: configuration, clients, and a token that never shows."""

import asyncio

import dagster as dg
import pydantic
import pytest

from dagster_vance import VanceAIResource
from tests.dagster.conftest import TOKENS, scan_for, vance_resource
from vance_provider.core import AsyncVanceClient, VanceClient
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


def test_repr_and_str_hide_the_token() -> None:
    resource = VanceAIResource(api_token=TOKENS["open"], base_url="http://127.0.0.1:1")
    for text in (repr(resource), str(resource), f"{resource!r}", repr([resource])):
        assert TOKENS["open"] not in text
    assert "base_url" in repr(resource)


def test_api_is_validated() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"api must be one of .*, got 'soap'"):
        VanceAIResource(api_token="x", api="soap")
    assert VanceAIResource(api_token=TOKENS["open"]).api_name == "open"
    assert VanceAIResource(api_token=TOKENS["web"]).api_name == "web"
    assert VanceAIResource(api_token=TOKENS["open"], api="web").api_name == "web"


@pytest.mark.parametrize("which", ["web", "open"])
def test_clients_talk_to_the_simulator(sim: SimulatorServer, which: str) -> None:
    resource = VanceAIResource(api_token=TOKENS[which], base_url=sim.base_url, timeout=5, max_retries=1)
    with resource.get_client() as client:
        assert isinstance(client, VanceClient)
        assert client.api == which
        assert client.balance().available == pytest.approx(1000.0)
        assert TOKENS[which] not in repr(client)

    async def use_async() -> float:
        async with resource.get_async_client() as aclient:
            assert isinstance(aclient, AsyncVanceClient)
            return (await aclient.balance()).available

    assert asyncio.run(use_async()) == pytest.approx(1000.0)
    assert resource.balance().available == pytest.approx(1000.0)


def test_inside_a_run_one_client_serves_the_step(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: object
) -> None:
    use_token("open")  # type: ignore[operator]
    seen: list[int] = []

    @dg.asset
    def probe_asset(context: dg.AssetExecutionContext, vanceai: VanceAIResource) -> float:
        with vanceai.get_client() as first, vanceai.get_client() as second:
            seen.extend([id(first), id(second)])
            context.log.info(f"resource: {vanceai!r}; client: {first!r}")
            return first.balance().available

    result = dg.materialize([probe_asset], resources={"vanceai": vance_resource(sim)}, instance=instance)
    assert result.success
    assert seen[0] == seen[1]
    assert result.output_for_node("probe_asset") == pytest.approx(1000.0)
    # The resource's repr was logged on purpose: the token is in no event, run, snapshot or file.
    assert scan_for(instance, TOKENS["open"], instance.root_directory) == []
