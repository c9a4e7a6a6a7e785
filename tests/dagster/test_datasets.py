"""The enhanced dataset asset against the simulator: both APIs, local folders and S3, images and video."""

import io
import shutil
from pathlib import Path
from typing import Any

import av
import dagster as dg
import pytest
from PIL import Image

from dagster_vance import build_enhanced_dataset_asset
from tests.conftest import image_bytes
from tests.dagster.conftest import S3_SECRET, checks, materialization, put_images, scan_for, vance_resource
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


def run(
    assets: list[Any],
    sim: SimulatorServer,
    instance: dg.DagsterInstance,
    resources: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    bound = {"vanceai": vance_resource(sim), **(resources or {})}
    return dg.materialize(assets, resources=bound, instance=instance, **kwargs)


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def charged_jobs(sim: SimulatorServer) -> list[str]:
    return [e.job_id for e in sim.state.charges()]


@pytest.mark.slow
def test_local_images_both_apis_incremental(
    sim: SimulatorServer, instance: dg.DagsterInstance, token: str, api: str, images: Any, tmp_path: Path
) -> None:
    src = images("in", 3)
    out = tmp_path / "out"
    photos = build_enhanced_dataset_asset(
        "photos", str(src), str(out), "upscale", {"scale": 2}, poll_interval=0.05
    )

    result = run([photos], sim, instance)
    assert result.success
    for i in range(3):
        img = decoded((out / f"p{i}.jpg").read_bytes())
        assert img.size == ((64 + 8 * i) * 2, 96) and img.format == "JPEG"
    md = materialization(result, "photos")
    assert md["vance/api"] == api and md["vance/tool"] == "upscale"
    assert (md["vance/inputs"], md["vance/done"], md["vance/failed"], md["vance/skipped"]) == (3, 3, 0, 0)
    assert md["vance/credits_spent"] == pytest.approx(3.0)
    assert md["vance/credits_remaining"] == pytest.approx(997.0) == sim.state.balance()
    assert md["vance/output"] == str(out)
    assert md["vance/manifest"] == str(out / MANIFEST_NAME)
    assert "| p0.jpg | p0.jpg | 64x48 -> 128x96 |" in md["vance/preview"]
    assert md["vance/elapsed_s"] > 0
    assert "sign=" not in str(md) and "expires=" not in str(md)  # no signed result URL
    found = checks(result)
    assert set(found) == {"outputs_valid", "inputs_accounted_for"}
    assert all(c.passed for c in found.values())
    assert found["outputs_valid"].metadata["vance/checked"].value == 3
    assert len(charged_jobs(sim)) == 3

    # Materialized again: nothing new, nothing paid.
    again = run([photos], sim, instance)
    md2 = materialization(again, "photos")
    assert (md2["vance/done"], md2["vance/processed_this_run"], md2["vance/credits_spent"]) == (3, 0, 0.0)
    assert len(charged_jobs(sim)) == 3
    assert all(c.passed for c in checks(again).values())

    # One new input and one changed input: only those two are processed and paid.
    images("in", 1, start=3)
    (src / "p0.jpg").write_bytes(image_bytes(40, 40))
    third = run([photos], sim, instance)
    md3 = materialization(third, "photos")
    assert (md3["vance/inputs"], md3["vance/processed_this_run"], md3["vance/credits_spent"]) == (4, 2, 2.0)
    assert decoded((out / "p0.jpg").read_bytes()).size == (80, 80)
    assert decoded((out / "p3.jpg").read_bytes()).size == (176, 96)
    assert len(charged_jobs(sim)) == 5
    assert sim.state.double_charges() == []
    assert scan_for(instance, token, instance.root_directory) == []


@pytest.mark.slow
def test_s3_both_apis(
    sim: SimulatorServer, instance: dg.DagsterInstance, token: str, api: str, s3: dict[str, Any]
) -> None:
    fs, bucket = s3["fs"], s3["bucket"]
    put_images(fs, f"s3://{bucket}/raw/sub", 1)
    put_images(fs, f"s3://{bucket}/raw", 1, start=1)
    photos = build_enhanced_dataset_asset(
        "s3_photos",
        f"s3://{bucket}/raw/",
        f"s3://{bucket}/enhanced/",
        "upscale",
        {"scale": 2},
        output_format="png",
        storage_options=s3["public"],  # no secret in the definitions
        storage_resource_key="vance_storage",  # keys from EnvVar, at run time
        poll_interval=0.05,
    )

    result = run([photos], sim, instance, {"vance_storage": s3["storage"]})
    assert result.success
    fs.invalidate_cache()
    assert decoded(fs.cat(f"{bucket}/enhanced/sub/p0.png")).size == (128, 96)
    img = decoded(fs.cat(f"{bucket}/enhanced/p1.png"))
    assert img.size == (144, 96) and img.format == "PNG"
    assert fs.exists(f"{bucket}/enhanced/{MANIFEST_NAME}")
    md = materialization(result, "s3_photos")
    assert md["vance/output"] == f"s3://{bucket}/enhanced/"
    assert md["vance/manifest"] == f"s3://{bucket}/enhanced/{MANIFEST_NAME}"
    assert (md["vance/done"], md["vance/credits_spent"]) == (2, 2.0)
    assert all(c.passed for c in checks(result).values())
    assert S3_SECRET not in str(md)  # storage credentials never reach metadata
    assert scan_for(instance, S3_SECRET) == []  # nor the run's config, snapshot or events

    again = run([photos], sim, instance, {"vance_storage": s3["storage"]})
    assert materialization(again, "s3_photos")["vance/credits_spent"] == 0.0
    assert len(sim.state.charges()) == 2 and sim.state.double_charges() == []


@pytest.mark.slow
def test_video_on_the_open_api(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, test_video: Path, tmp_path: Path
) -> None:
    use_token("open")
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(test_video, clips / "clip.mp4")
    asset = build_enhanced_dataset_asset(
        "clips_x2", str(clips), str(tmp_path / "clips_x2"), "video_upscale", {"scale": 2}, poll_interval=0.05
    )
    assert "video" in asset.specs_by_key[dg.AssetKey("clips_x2")].kinds

    result = run([asset], sim, instance)
    assert result.success
    output = tmp_path / "clips_x2" / "clip.mp4"
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 96)
        assert "mp4" in container.format.name
        assert sum(1 for _ in container.decode(stream)) >= 5
    md = materialization(result, "clips_x2")
    assert md["vance/done"] == 1 and md["vance/credits_spent"] > 0
    assert "64x48 -> 128x96" in md["vance/preview"]
    assert all(c.passed for c in checks(result).values())
    assert len(sim.state.charges()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("which", ["web", "open"])
def test_failed_run_reexecuted_resumes(
    sim: SimulatorServer,
    instance: dg.DagsterInstance,
    use_token: Any,
    images: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
) -> None:
    token = use_token(which)
    src, dest = images("in", 6), tmp_path / "out"
    monkeypatch.setenv("VANCE_TEST_SOURCE", str(src))
    monkeypatch.setenv("VANCE_TEST_DEST", str(dest))
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    sim.state.config.faults.fail_job = 0.5  # about half the jobs fail on the service side

    # Dagster keeps the last reconstructed job in-process (lru_cache): drop the previous test's, or
    # this run would use its definitions (and destination) and find that batch's manifest.
    from dagster._core.definitions.reconstruct import ReconstructableJob

    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    job = dg.reconstructable(_flaky_job)
    with dg.execute_job(job, instance=instance, raise_on_error=False) as first:
        assert not first.success
        failure = next(e for e in first.all_events if e.is_step_failure)
        assert "failed; first:" in failure.step_failure_data.error.message
        failed_run_id = first.run_id
    done_first = len(sim.state.charges())
    assert 0 < done_first < 6  # some paid, some failed

    sim.state.config.faults.fail_job = 0.0
    options = dg.ReexecutionOptions.from_failure(failed_run_id, instance)
    with dg.execute_job(job, instance=instance, reexecution_options=options) as second:
        assert second.success
        [event] = [e for e in second.all_events if e.is_step_materialization]
        md = {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
    assert md["vance/done"] == 6 and md["vance/processed_this_run"] == 6 - done_first
    assert md["vance/credits_spent"] == pytest.approx(6 - done_first)
    assert len(sim.state.charges()) == 6 and sim.state.double_charges() == []
    assert all(decoded(p.read_bytes()) for p in dest.glob("*.jpg"))
    assert scan_for(instance, token, instance.root_directory) == []


def _flaky_job() -> dg.JobDefinition:
    from tests.dagster.jobs import flaky_photos_job

    return flaky_photos_job()


@pytest.mark.slow
def test_budget_partial_then_resume(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("open")
    src = images("in", 5)
    photos = build_enhanced_dataset_asset(
        "budgeted",
        str(src),
        str(tmp_path / "out"),
        "upscale",
        {"scale": 2},
        credit_budget=2,
        on_insufficient_credits="partial",
        max_concurrency=1,
        poll_interval=0.05,
    )
    result = run([photos], sim, instance)
    assert result.success
    md = materialization(result, "budgeted")
    assert (md["vance/done"], md["vance/skipped"], md["vance/credits_spent"]) == (2, 3, 2.0)
    assert "budget" in md["vance/stopped"] and "not submitted" in md["vance/failures"]
    found = checks(result)
    assert found["inputs_accounted_for"].passed  # the skipped ones say why
    assert found["credits_within_budget"].passed
    assert found["inputs_accounted_for"].metadata["vance/skipped"].value == 3

    # The next run, with a bigger budget from run config, does only the rest.
    config = dg.RunConfig(ops={"budgeted": {"config": {"credit_budget": 10.0}}})
    more = run([photos], sim, instance, run_config=config)
    md2 = materialization(more, "budgeted")
    assert (md2["vance/done"], md2["vance/processed_this_run"], md2["vance/credits_spent"]) == (5, 3, 3.0)
    assert len(sim.state.charges()) == 5 and sim.state.double_charges() == []


def test_over_budget_fails_before_paying(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("web")
    photos = build_enhanced_dataset_asset(
        "strict", str(images("in", 3)), str(tmp_path / "out"), "upscale", credit_budget=1, poll_interval=0.05
    )
    result = run([photos], sim, instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "BudgetExceededError" in failure.step_failure_data.error.message
    assert sim.state.ledger == [] and not any(r.created_job for r in sim.state.requests)


@pytest.mark.slow
def test_continue_policy_materializes_with_failures(
    sim_factory: Any, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    from vance_provider.sim import Faults

    use_token("open")
    server = sim_factory(faults=Faults(fail_job=0.5, seed=3))
    src = images("in", 6)
    (src / "broken.jpg").write_bytes(image_bytes()[:200])  # truncated: rejected locally, never uploaded
    photos = build_enhanced_dataset_asset(
        "lenient",
        str(src),
        str(tmp_path / "out"),
        "upscale",
        {"scale": 2},
        on_failure="continue",
        poll_interval=0.05,
    )
    result = run([photos], server, instance)
    assert result.success
    md = materialization(result, "lenient")
    assert md["vance/failed"] >= 1 and md["vance/done"] + md["vance/failed"] == 7
    assert "broken.jpg" in md["vance/failures"] and "truncated" in md["vance/failures"]
    found = checks(result)
    assert found["outputs_valid"].passed and found["inputs_accounted_for"].passed
    assert len(server.state.charges()) == md["vance/done"]


@pytest.mark.slow
def test_checks_alone_read_the_manifest_and_catch_a_bad_output(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("open")
    src, out = images("in", 2), tmp_path / "out"
    photos = build_enhanced_dataset_asset(
        "checked", str(src), str(out), "upscale", {"scale": 2}, poll_interval=0.05
    )
    assert run([photos], sim, instance).success
    requests_before = len(sim.state.requests)

    (out / "p1.jpg").write_bytes((out / "p1.jpg").read_bytes()[:300])  # damaged after the fact
    (out / "p0.jpg").write_bytes(image_bytes(10, 10))  # wrong size
    images("in", 1, start=2)  # a new input nobody processed yet
    result = run(
        [photos], sim, instance, selection=dg.AssetSelection.checks_for_assets(photos), raise_on_error=False
    )
    assert result.get_asset_materialization_events() == []
    found = checks(result)
    assert not found["outputs_valid"].passed
    problems = found["outputs_valid"].metadata["vance/problems"].value
    assert "does not decode" in problems and "expected 128x96" in problems
    assert not found["inputs_accounted_for"].passed
    assert "p2.jpg" in found["inputs_accounted_for"].metadata["vance/unaccounted_inputs"].value
    assert len(sim.state.requests) == requests_before  # checks never call the service


def test_tool_errors_surface_at_definition_time(tmp_path: Path) -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="unknown"):
        build_enhanced_dataset_asset("bad", str(tmp_path), str(tmp_path / "o"), "upscal")
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="scale"):
        build_enhanced_dataset_asset("bad", str(tmp_path), str(tmp_path / "o"), "upscale", {"scale": 3})
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="prefix"):
        build_enhanced_dataset_asset(
            "bad", str(tmp_path / "*.jpg"), str(tmp_path / "o"), "upscale", partitions="per_file"
        )


def test_tool_missing_on_the_tokens_api_fails_without_retry(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, test_video: Path, tmp_path: Path
) -> None:
    use_token("web")  # video tools exist only on the Open API
    asset = build_enhanced_dataset_asset(
        "clips", str(test_video.parent), str(tmp_path / "o"), "video_upscale"
    )
    result = run([asset], sim, instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "UnknownToolError" in failure.step_failure_data.error.message
    assert sim.state.ledger == []


@pytest.mark.slow
def test_assets_run_in_the_vanceai_pool(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("open")
    a = build_enhanced_dataset_asset(
        "pool_a", str(images("a", 2)), str(tmp_path / "oa"), "upscale", poll_interval=0.05
    )
    b = build_enhanced_dataset_asset(
        "pool_b", str(images("b", 2)), str(tmp_path / "ob"), "denoise", poll_interval=0.05
    )
    none = build_enhanced_dataset_asset(
        "no_pool", str(images("c", 1)), str(tmp_path / "oc"), "upscale", pool=None
    )
    assert a.op.pool == b.op.pool == "vanceai" and none.op.pool is None
    # The same as `dagster instance concurrency set vanceai 1`
    instance.event_log_storage.set_concurrency_slots("vanceai", 1)
    result = run([a, b], sim, instance)
    assert result.success
    assert len(sim.state.charges()) == 4
    assert instance.event_log_storage.get_concurrency_info("vanceai").slot_count == 1
