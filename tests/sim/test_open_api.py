"""Protocol tests of the simulated VanceAI Open API v1 (``/api/v1``) against the vendor documents."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN, image_bytes
from tests.sim.helpers import (
    HOLD,
    Open,
    bearer,
    decode,
    local_server,
    open_error,
    poll,
    scheduler_passes,
    wait_for,
)
from vance_provider.sim import Account, Faults, SimulatorServer
from vance_provider.sim.processing import make_test_video

Connect = Callable[..., httpx.Client]
Factory = Callable[..., SimulatorServer]
OTHER_KEY = "sk_live_other0123456789abcdef01234567"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def api_for(server: SimulatorServer, connect: Connect, key: str = OPEN_KEY) -> Open:
    return Open(connect(server), key)


def ledger(server: SimulatorServer, job_id: str | None = None) -> list[tuple[str, float]]:
    return [(e.kind, e.amount) for e in server.state.ledger if job_id is None or e.job_id == job_id]


def two_accounts(**overrides: Any) -> dict[str, Any]:
    return {
        "accounts": [
            Account(name="a"),
            Account(name="b", web_tokens=["b" * 32], open_keys=[OTHER_KEY]),
        ],
        **overrides,
    }


def parse_iso(value: str) -> float:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def probe(data: bytes, tmp_path: Path) -> tuple[int, int, float, int]:
    """(width, height, duration, frames) of an MP4, read with PyAV."""
    path = tmp_path / "probe.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        duration = container.duration / 1_000_000 if container.duration else 0.0
        return stream.codec_context.width, stream.codec_context.height, duration, frames


# --- authentication --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/credits"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/job_x"),
        ("GET", "/api/v1/jobs/job_x/result"),
        ("POST", "/api/v1/jobs/job_x/cancel"),
        ("DELETE", "/api/v1/jobs/job_x"),
        ("POST", "/api/v1/uploads"),
    ],
)
def test_missing_key_is_401_invalid_api_key(shared_client: httpx.Client, method: str, path: str) -> None:
    err = open_error(shared_client.request(method, path), 401, "invalid_api_key")
    assert err["type"] == "auth"


@pytest.mark.parametrize(
    "key",
    ["sk_live_wrong0000000000000000000000000", OPEN_KEY + "x", WEB_TOKEN],
    ids=["unknown", "longer", "web"],
)
def test_invalid_key_is_401(shared_client: httpx.Client, key: str) -> None:
    resp = shared_client.get("/api/v1/credits", headers=bearer(key))
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] in {
        "invalid_api_key",
        "unauthorized",
    }  # both documented for a bad key
    assert resp.json()["error"]["type"] == "auth"


@pytest.mark.parametrize(
    "header",
    [f"Basic {OPEN_KEY}", f"Token {OPEN_KEY}", OPEN_KEY, "Bearer"],
    ids=["basic", "token", "bare", "empty"],
)
def test_non_bearer_header_is_401(shared_client: httpx.Client, header: str) -> None:
    resp = shared_client.get("/api/v1/credits", headers={"Authorization": header})
    assert resp.status_code == 401
    body = resp.json()
    assert body["error"]["code"] in {"invalid_api_key", "unauthorized"}
    assert body["error"]["type"] == "auth" and body["error"]["message"]


def test_revoked_key_is_401_invalid_api_key(api: Open, sim: SimulatorServer) -> None:
    sim.state.config.queue_delay = 600.0  # the job stays queued: nothing reserved, nothing paid
    job_id = api.create()
    assert api.credits()["balance"] == 1000.0
    sim.state.revoke(OPEN_KEY)
    open_error(api.client.get("/api/v1/credits", headers=api.headers), 401, "invalid_api_key")
    open_error(api.client.get(f"/api/v1/jobs/{job_id}", headers=api.headers), 401, "invalid_api_key")


# --- creating jobs -------------------------------------------------------------------------
@pytest.mark.parametrize("field_name", ["image", "file"])
def test_multipart_create_is_202_queued_and_uncharged(
    api: Open, sim: SimulatorServer, field_name: str
) -> None:
    # The job stays queued (nothing reserved yet) until the simulator's clock jumps, however late
    # the ledger is looked at.
    sim.state.config.queue_delay = 600.0
    resp = api.submit("upscale", {"scale": 4, "face_enhance": True}, field_name=field_name)
    assert resp.status_code == 202
    body = resp.json()
    assert body["job_id"].startswith("job_")
    assert body["status"] == "queued"
    assert (body["tool"], body["media"]) == ("upscale", "image")
    assert body["credits_charged"] == 0 and body["credits_estimated"] == 1.0
    assert ISO.match(body["created_at"])
    assert ledger(sim) == []
    assert [r.created_job for r in sim.state.requests if r.created_job] == [body["job_id"]]
    sim.state.clock.advance(600.0)
    assert api.wait(body["job_id"])["status"] == "succeeded"


@pytest.mark.parametrize("field_name", ["image_url", "source_url"])
def test_json_create_with_image_url_fetches_the_image(
    sim_factory: Factory, connect: Connect, field_name: str
) -> None:
    api = api_for(sim_factory(allow_loopback_urls=True), connect)
    with local_server(body=image_bytes(64, 48), content_type="image/jpeg") as origin:
        resp = api.submit_json(
            {field_name: f"{origin.url}/photo.jpg", "tool": "upscale", "config": {"scale": 2}}
        )
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "queued" and resp.json()["credits_charged"] == 0
        body = api.wait(resp.json()["job_id"])
        assert body["status"] == "succeeded", body
        assert [(r.method, r.path) for r in origin.received] == [("GET", "/photo.jpg")]
        assert "authorization" not in {k.lower() for k in origin.received[0].headers}
    assert (body["result"]["width"], body["result"]["height"]) == (128, 96)
    assert decode(api.download(body["job_id"])).size == (128, 96)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_image_url_on_loopback_is_ssrf_blocked(sim: SimulatorServer, api: Open, host: str) -> None:
    with local_server(body=image_bytes(), content_type="image/jpeg") as origin:
        port = origin.url.rsplit(":", 1)[1]
        resp = api.submit_json({"image_url": f"http://{host}:{port}/photo.jpg", "tool": "upscale"})
        assert resp.status_code == 202
        body = api.wait(resp.json()["job_id"])
        assert origin.received == []  # the simulator never fetched it
    assert body["status"] == "failed"
    assert body["error"]["code"] == "ssrf_blocked" and body["error"]["type"] == "validation"
    assert ledger(sim) == []


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/photo.jpg", "file:///etc/passwd", "gopher://127.0.0.1:70/x", "http://", "photo.jpg"],
)
def test_non_http_url_is_400_invalid_parameter(
    shared_api: Open, shared_sim: SimulatorServer, url: str
) -> None:
    before = len(shared_sim.state.jobs)
    open_error(shared_api.submit_json({"image_url": url, "tool": "upscale"}), 400, "invalid_parameter")
    assert len(shared_sim.state.jobs) == before


@pytest.mark.parametrize(
    "tool", ["video_translate", "video_colorize", "subtitle", "colorize", "enlarge3", ""]
)
def test_unknown_or_unavailable_tool_is_400(shared_api: Open, tool: str) -> None:
    resp = shared_api.submit(tool)
    code = "invalid_parameter" if tool == "" else "unsupported_tool"  # an empty tool is a missing parameter
    assert open_error(resp, 400, code)["type"] == "validation"


@pytest.mark.parametrize(
    ("tool", "config"),
    [
        ("upscale", {"scale": 3}),
        ("upscale", {"scale": 6}),
        ("upscale", {"scale": "4"}),
        ("upscale", {"scale": 16}),
        ("upscale", {"face_enhance": "yes"}),
        ("custom", {}),
        ("custom", {"prompt": ""}),
        ("custom", {"prompt": "   "}),
    ],
)
def test_invalid_config_is_400_invalid_parameter(shared_api: Open, tool: str, config: dict[str, Any]) -> None:
    open_error(shared_api.submit(tool, config), 400, "invalid_parameter")


@pytest.mark.parametrize(
    ("tool", "config", "status"),
    [
        ("video_upscale", {"scale": 8}, 400),
        ("video_upscale", {"scale": 4}, 404),
        ("video_upscale", {"fps": 500}, 400),
        ("video_hdr", {"quality": "ultra"}, 400),
        ("video_hdr", {"codec": "vp9"}, 400),
        ("video_face_enhance", {"codec": "h265", "quality": "low"}, 404),
    ],
)
def test_video_config_is_validated_before_the_upload(
    shared_api: Open, tool: str, config: dict[str, Any], status: int
) -> None:
    resp = shared_api.submit_json(
        {"upload_id": "upl_000000000000000000000000", "tool": tool, "config": config}
    )
    open_error(resp, status, "invalid_parameter" if status == 400 else "upload_not_found")


@pytest.mark.parametrize(
    ("tool", "config"),
    [("upscale", {"scale": 2}), ("upscale", {"scale": 8}), ("custom", {"prompt": "brighter"})],
)
def test_valid_config_is_accepted(shared_api: Open, tool: str, config: dict[str, Any]) -> None:
    resp = shared_api.submit(tool, config)
    assert resp.status_code == 202, resp.text
    assert shared_api.wait(resp.json()["job_id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "body",
    [
        {"tool": "upscale"},
        {
            "tool": "upscale",
            "image_url": "https://127.0.0.1/a.jpg",
            "source_url": "https://127.0.0.1/b.jpg",
            "upload_id": "upl_1",
        },
        {"tool": "upscale", "upload_id": "upl_1"},
        {"tool": "upscale", "image_url": "https://127.0.0.1/a.jpg", "output_format": "gif"},
        {"tool": "upscale", "image_url": "https://127.0.0.1/a.jpg", "config": "scale=2"},
    ],
    ids=["no-source", "many-sources", "upload-id-for-image", "bad-output-format", "config-not-object"],
)
def test_malformed_json_create_is_400(shared_api: Open, body: dict[str, Any]) -> None:
    open_error(shared_api.submit_json(body), 400, "invalid_parameter")


@pytest.mark.parametrize(
    "data", [b"%PDF-1.4 not an image", b"GIF89a" + b"\x00" * 32, b"\x00" * 128], ids=["pdf", "gif", "zeros"]
)
def test_unsupported_upload_format_is_415(shared_api: Open, shared_sim: SimulatorServer, data: bytes) -> None:
    before = len(shared_sim.state.jobs)
    assert open_error(shared_api.submit(data=data), 415, "unsupported_format")["type"] == "validation"
    assert len(shared_sim.state.jobs) == before


def test_image_over_the_direct_upload_limit_is_413(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(open_max_image_bytes=1000)
    api = api_for(server, connect)
    small, large = image_bytes(16, 16), image_bytes(200, 150)
    assert len(small) <= 1000 < len(large)
    open_error(api.submit(data=large), 413, "file_too_large")
    assert server.state.jobs == {}
    assert api.submit(data=small).status_code == 202


@pytest.mark.parametrize("tool", ["video_upscale", "video_hdr", "video_face_enhance"])
def test_video_tool_with_multipart_image_is_400(shared_api: Open, tool: str) -> None:
    open_error(shared_api.submit(tool, {}), 400, "invalid_parameter")


# --- polling and results --------------------------------------------------------------------
def test_job_goes_queued_processing_succeeded(sim_factory: Factory, connect: Connect) -> None:
    """Each state seen by a poll: the job moves on only when the test moves the simulator's clock."""
    server = sim_factory(queue_delay=HOLD, time_per_job=HOLD)
    api = api_for(server, connect)
    job_id = api.create("upscale", {"scale": 2})
    bodies = [api.get(job_id)]  # queued: its delay has not passed
    server.state.clock.advance(HOLD)  # ready: the scheduler starts it
    bodies.append(poll(lambda: api.get(job_id), lambda b: b["status"] != "queued"))
    server.state.clock.advance(HOLD / 2)  # half way
    bodies.append(api.get(job_id))
    server.state.clock.advance(HOLD)  # past its end: the scheduler renders it
    bodies.append(poll(lambda: api.get(job_id), lambda b: b["status"] != "processing"))
    order = [b["status"] for i, b in enumerate(bodies) if i == 0 or bodies[i - 1]["status"] != b["status"]]
    assert order == ["queued", "processing", "succeeded"]
    for body in bodies:
        assert body["job_id"] == job_id and body["tool"] == "upscale" and body["media"] == "image"
        assert isinstance(body["progress"], int) and 0 <= body["progress"] <= 100
    queued = [b for b in bodies if b["status"] == "queued"]
    processing = [b for b in bodies if b["status"] == "processing"]
    assert all(b["progress"] == 0 and b["result"] is None and b["finished_at"] is None for b in queued)
    assert all(b["phase"] == "processing" and b["progress"] <= 99 for b in processing)
    progress = [b["progress"] for b in processing]
    assert progress == sorted(progress) and 40 <= progress[-1] <= 60  # half way
    done = bodies[-1]
    assert done["progress"] == 100 and done["error"] is None
    assert set(done["result"]) == {"width", "height", "size"}
    assert (done["result"]["width"], done["result"]["height"]) == (128, 96)
    assert done["result_url"].startswith("http") and ISO.match(done["finished_at"])
    assert done["credits_charged"] == 1.0


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_upscale_result_has_the_scaled_size(shared_api: Open, scale: int) -> None:
    job_id = shared_api.create("upscale", {"scale": scale}, data=image_bytes(64, 48))
    body = shared_api.wait(job_id)
    assert body["status"] == "succeeded"
    assert (body["result"]["width"], body["result"]["height"]) == (64 * scale, 48 * scale)
    data = shared_api.download(job_id)
    assert len(data) == body["result"]["size"]
    assert decode(data).size == (64 * scale, 48 * scale)


def test_remove_bg_result_is_png_with_alpha(shared_api: Open) -> None:
    job_id = shared_api.create("remove_bg", output_format="png")
    assert shared_api.wait(job_id)["status"] == "succeeded"
    img = decode(shared_api.download(job_id))
    assert img.format == "PNG" and img.mode == "RGBA"
    assert img.getchannel("A").getextrema() == (0, 255)


@pytest.mark.parametrize(
    ("fmt", "pil", "ctype"),
    [
        (None, "JPEG", "image/jpeg"),
        ("jpg", "JPEG", "image/jpeg"),
        ("png", "PNG", "image/png"),
        ("webp", "WEBP", "image/webp"),
    ],
)
def test_output_format_is_honoured(shared_api: Open, fmt: str | None, pil: str, ctype: str) -> None:
    job_id = shared_api.create("denoise", output_format=fmt)
    shared_api.wait(job_id)
    resp = httpx.get(shared_api.result_location(job_id))
    assert resp.headers["content-type"] == ctype
    assert decode(resp.content).format == pil


def test_result_redirects_to_a_url_that_refuses_authorization(shared_api: Open) -> None:
    job_id = shared_api.create()
    body = shared_api.wait(job_id)
    resp = shared_api.client.get(f"/api/v1/jobs/{job_id}/result", headers=shared_api.headers)
    assert resp.status_code == 302
    location = resp.headers["location"]
    assert location.startswith("http") and "sign=" in location and OPEN_KEY not in location
    plain = httpx.get(location)
    assert plain.status_code == 200 and len(plain.content) == body["result"]["size"]
    assert httpx.get(location, headers=bearer()).status_code == 400
    assert httpx.get(body["result_url"]).content == plain.content  # the polled result_url works too
    tampered = re.sub(r"sign=[0-9a-f]+", "sign=" + "0" * 64, location)
    assert httpx.get(tampered).status_code == 403


def test_signed_url_expires_and_result_re_signs(sim: SimulatorServer, api: Open) -> None:
    job_id = api.create()
    api.wait(job_id)
    location = api.result_location(job_id)
    assert httpx.get(location).status_code == 200
    sim.state.clock.advance(sim.config.signed_url_ttl + 1)
    assert httpx.get(location).status_code == 403
    fresh = api.result_location(job_id)
    assert fresh != location
    assert httpx.get(fresh).status_code == 200


def test_result_not_ready_before_finish_and_during_sync_window(
    sim_factory: Factory, connect: Connect
) -> None:
    server = sim_factory(queue_delay=0.3, result_sync_window=5)
    api = api_for(server, connect)
    job_id = api.create()
    path = f"/api/v1/jobs/{job_id}/result"
    early = api.client.get(path, headers=api.headers)
    err = open_error(early, 202, "result_not_ready")
    assert err["type"] == "processing" and int(early.headers["retry-after"]) >= 1
    assert api.wait(job_id)["status"] == "succeeded"
    open_error(api.client.get(path, headers=api.headers), 202, "result_not_ready")
    server.state.clock.advance(5.1)
    assert api.client.get(path, headers=api.headers).status_code == 302


def test_poll_retry_after_only_while_the_job_runs(sim_factory: Factory, connect: Connect) -> None:
    """The ``poll_retry_after`` knob: a hint for the next poll on answers about a running job."""
    server = sim_factory(poll_retry_after=7, time_per_job=HOLD)
    api = api_for(server, connect)
    job_id = api.create()
    api.wait_status(job_id, "processing")  # started: its end is on the clock
    running = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.headers)
    assert running.json()["status"] == "processing" and running.headers["retry-after"] == "7"
    server.state.clock.advance(HOLD)
    assert api.wait(job_id)["status"] == "succeeded"
    done = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.headers)
    assert "retry-after" not in done.headers


# --- cancel and delete --------------------------------------------------------------------------
def test_cancel_queued_job(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(queue_delay=HOLD)
    api = api_for(server, connect)
    job_id = api.create()
    resp = api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.headers)
    assert resp.status_code == 200 and resp.json() == {"job_id": job_id, "status": "canceled"}
    assert api.get(job_id)["status"] == "canceled"
    server.state.clock.advance(2 * HOLD)  # past its start time: a canceled job never starts
    scheduler_passes(server)
    assert api.get(job_id)["status"] == "canceled"
    assert ledger(server) == []  # nothing was reserved, nothing to refund
    assert api.credits() == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}
    again = api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.headers)
    open_error(again, 409, "not_cancelable")


def test_cancel_processing_job_refunds_the_reservation(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(time_per_job=HOLD)
    api = api_for(server, connect)
    job_id = api.create()
    api.wait_status(job_id, "processing")
    assert api.credits() == {"balance": 999.0, "used": 0.0, "frozen": 1.0}
    assert (
        api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.headers).json()["status"] == "canceled"
    )
    assert ledger(server, job_id) == [("reserve", 1.0), ("refund", 1.0)]
    assert api.credits() == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}
    open_error(api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.headers), 409, "not_cancelable")


def test_cancel_finished_or_unknown_job(shared_api: Open) -> None:
    job_id = shared_api.create()
    shared_api.wait(job_id)
    resp = shared_api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=shared_api.headers)
    open_error(resp, 409, "not_cancelable")
    unknown = shared_api.client.post(
        "/api/v1/jobs/job_000000000000000000000000/cancel", headers=shared_api.headers
    )
    open_error(unknown, 404, "job_not_found")


def test_delete_in_progress_job_cancels_first(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(time_per_job=HOLD)
    api = api_for(server, connect)
    job_id = api.create()
    api.wait_status(job_id, "processing")
    resp = api.client.delete(f"/api/v1/jobs/{job_id}", headers=api.headers)
    assert resp.status_code == 200 and resp.json() == {"job_id": job_id, "deleted": True}
    assert server.state.jobs[job_id].status == "canceled"
    assert ledger(server, job_id) == [("reserve", 1.0), ("refund", 1.0)]
    assert api.credits() == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}
    for method, path in [("GET", ""), ("GET", "/result"), ("POST", "/cancel")]:
        open_error(
            api.client.request(method, f"/api/v1/jobs/{job_id}{path}", headers=api.headers),
            404,
            "job_not_found",
        )
    again = api.client.delete(f"/api/v1/jobs/{job_id}", headers=api.headers)
    assert again.status_code == 200 and again.json() == {"job_id": job_id, "deleted": True}


def test_delete_finished_job_removes_its_result(sim: SimulatorServer, api: Open) -> None:
    job_id = api.create()
    api.wait(job_id)
    location = api.result_location(job_id)
    assert httpx.get(location).status_code == 200
    assert api.client.delete(f"/api/v1/jobs/{job_id}", headers=api.headers).json()["deleted"] is True
    assert httpx.get(location).status_code == 404
    assert ledger(sim, job_id) == [("reserve", 1.0), ("confirm", 1.0)]  # deleting is not a refund


def test_other_accounts_job_is_not_found(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(**two_accounts(time_per_job=HOLD))
    mine, theirs = api_for(server, connect), api_for(server, connect, OTHER_KEY)
    job_id = mine.create()
    for method, path in [("GET", ""), ("GET", "/result"), ("POST", "/cancel"), ("DELETE", "")]:
        resp = theirs.client.request(method, f"/api/v1/jobs/{job_id}{path}", headers=theirs.headers)
        open_error(resp, 404, "job_not_found")
    assert not server.state.jobs[job_id].deleted
    assert mine.get(job_id)["status"] in {"queued", "processing"}


# --- two-phase video upload ---------------------------------------------------------------------
MP4 = {"Content-Type": "video/mp4"}  # the type the upload was created with: the URL signs it


def test_create_upload_is_201_with_a_presigned_put_url(sim: SimulatorServer, api: Open) -> None:
    resp = api.create_upload("clip.mp4", file_size=734003200, content_type="video/mp4")
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"upload_id", "put_url", "expires_at", "max_bytes"}
    assert body["upload_id"].startswith("upl_")
    assert body["put_url"].startswith("http") and OPEN_KEY not in body["put_url"]
    assert body["max_bytes"] == 5261334937
    assert ISO.match(body["expires_at"])
    assert parse_iso(body["expires_at"]) == pytest.approx(sim.state.clock.now() + 24 * 3600, abs=5)


@pytest.mark.parametrize("file_name", ["photo.jpg", "clip", "clip.mp4.txt", "", None])
def test_create_upload_needs_a_video_file_name(shared_api: Open, file_name: str | None) -> None:
    open_error(shared_api.create_upload(file_name), 400, "invalid_parameter")  # type: ignore[arg-type]


def test_create_upload_over_max_bytes_is_413(shared_api: Open) -> None:
    open_error(shared_api.create_upload("big.mp4", file_size=5261334937 + 1), 413, "file_too_large")
    assert shared_api.create_upload("edge.mp4", file_size=5261334937).status_code == 201


def test_put_takes_no_authorization_header(sim: SimulatorServer, api: Open, test_video: Path) -> None:
    body = api.create_upload("clip.mp4").json()
    data = test_video.read_bytes()
    with_auth = httpx.put(body["put_url"], content=data, headers=bearer())
    assert with_auth.status_code == 400
    assert not sim.state.uploads[body["upload_id"]].put_done
    forged = httpx.put(
        re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=" + "0" * 64, body["put_url"]), content=data
    )
    assert forged.status_code == 403
    plain = httpx.put(body["put_url"], content=data, headers={"Content-Type": "video/mp4"})
    assert plain.status_code == 200 and plain.headers["etag"]
    assert sim.state.uploads[body["upload_id"]].size == len(data)


def test_video_upscale_from_upload(sim: SimulatorServer, api: Open, test_video: Path, tmp_path: Path) -> None:
    src_w, src_h, src_duration, src_frames = probe(test_video.read_bytes(), tmp_path)
    upload_id = api.upload_video(test_video.read_bytes())
    resp = api.submit_json({"upload_id": upload_id, "tool": "video_upscale", "config": {"scale": 2}})
    assert resp.status_code == 202
    assert (resp.json()["media"], resp.json()["status"], resp.json()["credits_charged"]) == (
        "video",
        "queued",
        0,
    )
    body = api.wait(resp.json()["job_id"], timeout=20)
    assert body["status"] == "succeeded", body
    result = body["result"]
    assert set(result) == {"width", "height", "duration", "size", "codec"}
    assert (result["width"], result["height"]) == (2 * src_w, 2 * src_h)
    assert result["codec"] == "h264"
    data = api.download(body["job_id"])
    assert len(data) == result["size"]
    width, height, duration, frames = probe(data, tmp_path)
    assert (width, height) == (2 * src_w, 2 * src_h)
    assert frames == src_frames
    assert result["duration"] == pytest.approx(duration, abs=0.01)
    assert duration == pytest.approx(src_duration, abs=0.15)
    assert ledger(sim, body["job_id"]) == [("reserve", 1.0), ("confirm", 1.0)]


def test_upload_id_is_single_use(api: Open, test_video: Path) -> None:
    upload_id = api.upload_video(test_video.read_bytes())
    first = api.submit_json({"upload_id": upload_id, "tool": "video_hdr"})
    assert first.status_code == 202
    second = api.submit_json({"upload_id": upload_id, "tool": "video_hdr"})
    open_error(second, 409, "upload_already_consumed")


def test_unknown_or_foreign_upload_id_is_404(
    sim_factory: Factory, connect: Connect, test_video: Path
) -> None:
    server = sim_factory(**two_accounts())
    mine, theirs = api_for(server, connect), api_for(server, connect, OTHER_KEY)
    open_error(
        mine.submit_json({"upload_id": "upl_000000000000000000000000", "tool": "video_upscale"}),
        404,
        "upload_not_found",
    )
    upload_id = mine.upload_video(test_video.read_bytes())
    open_error(theirs.submit_json({"upload_id": upload_id, "tool": "video_upscale"}), 404, "upload_not_found")
    assert mine.submit_json({"upload_id": upload_id, "tool": "video_upscale"}).status_code == 202


def test_expired_upload_is_410(sim: SimulatorServer, api: Open, test_video: Path) -> None:
    body = api.create_upload("clip.mp4").json()
    assert httpx.put(body["put_url"], content=test_video.read_bytes(), headers=MP4).status_code == 200
    sim.state.clock.advance(sim.config.upload_ttl + 1)
    open_error(
        api.submit_json({"upload_id": body["upload_id"], "tool": "video_upscale"}), 410, "upload_expired"
    )
    late = api.create_upload("late.mp4").json()
    sim.state.clock.advance(sim.config.upload_ttl + 1)
    assert httpx.put(late["put_url"], content=test_video.read_bytes(), headers=MP4).status_code == 403


def test_job_created_before_the_put_fails_upload_incomplete(sim: SimulatorServer, api: Open) -> None:
    upload_id = api.create_upload("clip.mp4").json()["upload_id"]
    resp = api.submit_json({"upload_id": upload_id, "tool": "video_upscale"})
    assert resp.status_code == 202
    body = api.wait(resp.json()["job_id"])
    assert body["status"] == "failed" and body["error"]["code"] == "upload_incomplete"
    assert ledger(sim) == []


@pytest.mark.parametrize(("width", "height"), [(1200, 1100), (2100, 200)], ids=["short-side", "long-side"])
def test_video_over_the_output_limit_fails_uncharged(
    sim: SimulatorServer, api: Open, tmp_path: Path, width: int, height: int
) -> None:
    video = make_test_video(tmp_path / "wide.mp4", width, height, seconds=0.2, fps=5)
    upload_id = api.upload_video(video.read_bytes())
    resp = api.submit_json({"upload_id": upload_id, "tool": "video_upscale", "config": {"scale": 2}})
    assert resp.status_code == 202
    body = api.wait(resp.json()["job_id"])
    assert body["status"] == "failed"
    assert body["error"]["code"] == "resolution_limit_exceeded" and body["error"]["type"] == "validation"
    assert ledger(sim) == []
    assert api.credits() == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}


# --- credits ---------------------------------------------------------------------------------------
def test_credits_shape(api: Open) -> None:
    body = api.credits()
    assert body == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in body.values())


def test_credits_reserved_at_start_and_confirmed_on_success(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(queue_delay=HOLD, time_per_job=HOLD)
    api = api_for(server, connect)
    job_id = api.create()
    assert ledger(server) == [] and api.credits() == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}
    server.state.clock.advance(HOLD)  # it starts
    api.wait_status(job_id, "processing")
    assert ledger(server, job_id) == [("reserve", 1.0)]
    assert api.credits() == {"balance": 999.0, "used": 0.0, "frozen": 1.0}
    server.state.clock.advance(HOLD)  # it ends
    assert api.wait(job_id)["credits_charged"] == 1.0
    assert ledger(server, job_id) == [("reserve", 1.0), ("confirm", 1.0)]
    assert api.credits() == {"balance": 999.0, "used": 1.0, "frozen": 0.0}
    api.download(job_id)
    api.download(job_id)
    assert ledger(server) == [("reserve", 1.0), ("confirm", 1.0)]  # downloads are free


def test_failed_job_refunds_in_full(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(fail_job=1.0))
    api = api_for(server, connect)
    job_id = api.create()
    body = api.wait(job_id)
    assert body["status"] == "failed" and body["error"]["code"] == "processing_failed"
    assert ledger(server, job_id) == [("reserve", 1.0), ("refund", 1.0)]
    assert api.credits() == {"balance": 1000.0, "used": 0.0, "frozen": 0.0}


def test_preflight_check_is_402(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(accounts=[Account(credits=1.5)])
    api = api_for(server, connect)
    err = open_error(api.submit("upscale", {"scale": 8}), 402, "insufficient_credits")  # costs 2
    assert err["type"] == "billing"
    assert server.state.jobs == {}
    assert api.submit("upscale", {"scale": 2}).status_code == 202


def test_preflight_with_less_than_one_credit(sim_factory: Factory, connect: Connect) -> None:
    api = api_for(sim_factory(accounts=[Account(credits=0.5)]), connect)
    open_error(api.submit(), 402, "insufficient_credits")


def test_accepted_job_without_credits_at_reservation_fails(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(accounts=[Account(credits=1.0)], queue_delay=0.3)
    api = api_for(server, connect)
    first, second = api.create(), api.create()  # both pass the pre-flight check
    assert api.wait(first)["status"] == "succeeded"
    body = api.wait(second)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "insufficient_credits" and body["error"]["type"] == "billing"
    assert ledger(server) == [("reserve", 1.0), ("confirm", 1.0)]
    assert api.credits() == {"balance": 0.0, "used": 1.0, "frozen": 0.0}


# --- idempotency -------------------------------------------------------------------------------------
def test_idempotent_replay_returns_the_same_job(sim: SimulatorServer, api: Open) -> None:
    key = {"Idempotency-Key": "8f3b1c2a-unique"}
    first = api.submit("upscale", {"scale": 4}, headers=key)
    second = api.submit("upscale", {"scale": 4}, headers=key)
    assert first.status_code == 202 and second.status_code in {200, 202}
    assert second.json()["job_id"] == first.json()["job_id"]
    assert len(sim.state.jobs) == 1
    assert len([r for r in sim.state.requests if r.created_job]) == 1
    assert [r.idempotency_key for r in sim.state.requests if r.path == "/api/v1/jobs"] == [
        "8f3b1c2a-unique"
    ] * 2
    api.wait(first.json()["job_id"])
    assert [kind for kind, _ in ledger(sim)] == ["reserve", "confirm"]
    assert sim.state.double_charges() == []
    other = api.submit("upscale", {"scale": 4}, headers={"Idempotency-Key": "another"})
    assert other.json()["job_id"] != first.json()["job_id"]


@pytest.mark.parametrize(("tool", "config"), [("upscale", {"scale": 2}), ("denoise", {"scale": 4})])
def test_idempotency_key_with_other_tool_or_config_is_409(
    sim: SimulatorServer, api: Open, tool: str, config: dict[str, Any]
) -> None:
    key = {"Idempotency-Key": "k-1"}
    assert api.submit("upscale", {"scale": 4}, headers=key).status_code == 202
    open_error(api.submit(tool, config, headers=key), 409, "idempotency_conflict")
    assert len(sim.state.jobs) == 1


# --- rate and concurrency limits --------------------------------------------------------------------
def test_rate_limit_per_key(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(rate_limit=3, rate_window=60, accounts=[Account(open_keys=[OPEN_KEY, OTHER_KEY])])
    api = api_for(server, connect)
    job_id = api.create()
    remaining = []
    for resp in (
        api.client.get(f"/api/v1/jobs/{job_id}", headers=api.headers),
        api.client.get("/api/v1/credits", headers=api.headers),
    ):
        assert resp.status_code == 200
        assert resp.headers["x-ratelimit-limit"] == "3"
        assert int(resp.headers["x-ratelimit-reset"]) > time.time()
        remaining.append(resp.headers["x-ratelimit-remaining"])
    assert remaining == ["1", "0"]
    limited = api.client.get("/api/v1/credits", headers=api.headers)
    assert open_error(limited, 429, "rate_limited")["type"] == "rate_limit"
    assert limited.headers["x-ratelimit-limit"] == "3" and limited.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert int(limited.headers["x-ratelimit-reset"]) >= int(time.time())
    assert (
        api_for(server, connect, OTHER_KEY)
        .client.get("/api/v1/credits", headers=bearer(OTHER_KEY))
        .status_code
        == 200
    )
    server.state.clock.advance(61)
    assert api.client.get("/api/v1/credits", headers=api.headers).status_code == 200


def test_concurrency_limit_per_account(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(
        max_concurrent_images=2, queue_delay=5, accounts=[Account(open_keys=[OPEN_KEY, OTHER_KEY])]
    )
    api, second_key = api_for(server, connect), api_for(server, connect, OTHER_KEY)
    first = api.create()
    api.create()
    err = open_error(api.submit(), 429, "concurrency_limit_exceeded")
    assert err["type"] == "rate_limit"
    open_error(second_key.submit(), 429, "concurrency_limit_exceeded")  # other keys share the cap
    assert len(server.state.jobs) == 2
    api.client.post(f"/api/v1/jobs/{first}/cancel", headers=api.headers)
    assert api.submit().status_code == 202


def test_concurrency_limit_does_not_cross_accounts(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(**two_accounts(max_concurrent_images=1, queue_delay=5))
    mine, theirs = api_for(server, connect), api_for(server, connect, OTHER_KEY)
    mine.create()
    open_error(mine.submit(), 429, "concurrency_limit_exceeded")
    assert theirs.submit().status_code == 202


# --- the request log ------------------------------------------------------------------------------
def test_request_log_keeps_keys_out_of_urls(sim: SimulatorServer, api: Open) -> None:
    job_id = api.create()
    api.wait(job_id)
    api.download(job_id)
    wait_for(lambda: any(r.path.startswith("/storage/") for r in sim.state.requests))
    assert not [r.url for r in sim.state.requests if OPEN_KEY in r.url]
    api_calls = [r for r in sim.state.requests if r.path.startswith("/api/")]
    storage = [r for r in sim.state.requests if r.path.startswith("/storage/")]
    assert api_calls and all(r.authorization and r.account == "demo" for r in api_calls)
    assert storage and not any(r.authorization for r in storage)
    assert all("sign=" in r.url for r in storage)  # the log keeps full URLs, query included


# --- more of the documented video and URL behaviour --------------------------------------------
def test_put_over_max_bytes_is_413(sim_factory: Factory, connect: Connect) -> None:
    api = api_for(sim_factory(open_max_upload_bytes=1000), connect)
    body = api.create_upload("clip.mp4").json()
    assert body["max_bytes"] == 1000
    assert httpx.put(body["put_url"], content=b"\x00" * 2000, headers=MP4).status_code == 413
    open_error(api.create_upload("clip.mp4", file_size=1001), 413, "file_too_large")


def test_video_phases_upload_sync_process(sim_factory: Factory, connect: Connect, test_video: Path) -> None:
    """A poll in each phase: the test moves the simulator's clock through the job's time."""
    server = sim_factory(time_per_job=0.0, time_per_video_second=HOLD)
    api = api_for(server, connect)
    upload_id = api.upload_video(test_video.read_bytes())
    job_id = api.submit_json({"upload_id": upload_id, "tool": "video_hdr"}).json()["job_id"]
    bodies = [api.wait_status(job_id, "processing")]  # just started: uploading
    job = server.state.jobs[job_id]
    assert job.started_at is not None and job.finish_at is not None
    length = job.finish_at - job.started_at
    for fraction in (0.2, 0.3, 0.3):  # syncing (0.15-0.25), then processing, further on
        server.state.clock.advance(fraction * length)
        bodies.append(api.get(job_id))
    server.state.clock.advance(length)
    bodies.append(api.wait(job_id))
    assert bodies[-1]["status"] == "succeeded", bodies[-1]
    processing = [b for b in bodies if b["status"] == "processing"]
    phases = [
        b["phase"] for i, b in enumerate(processing) if i == 0 or processing[i - 1]["phase"] != b["phase"]
    ]
    assert phases == ["uploading", "syncing", "processing"]
    assert all(b["progress"] == 0 for b in processing if b["phase"] != "processing")
    assert max(b["progress"] for b in processing) > 0
    assert bodies[-1]["progress"] == 100


def test_video_estimate_is_a_hint_and_the_charge_is_measured(
    sim: SimulatorServer, api: Open, test_video: Path
) -> None:
    upload_id = api.upload_video(test_video.read_bytes())
    config = {"scale": 2, "source_width": 1920, "source_height": 1080, "duration": 60}
    resp = api.submit_json({"upload_id": upload_id, "tool": "video_upscale", "config": config})
    assert resp.status_code == 202
    estimate = resp.json()["credits_estimated"]
    assert estimate > 1.0
    body = api.wait(resp.json()["job_id"], timeout=20)
    assert body["status"] == "succeeded"
    assert (body["result"]["width"], body["result"]["height"]) == (128, 96)  # not the claimed 1920x1080
    [(_, amount)] = [e for e in ledger(sim, body["job_id"]) if e[0] == "confirm"]
    assert amount < estimate  # billed on the measured 1 s clip, not the claimed 60 s


def test_video_preflight_uses_the_estimate(sim_factory: Factory, connect: Connect, test_video: Path) -> None:
    server = sim_factory(accounts=[Account(credits=5)])
    api = api_for(server, connect)
    upload_id = api.upload_video(test_video.read_bytes())
    config = {"scale": 2, "source_width": 64, "source_height": 48, "duration": 600}
    resp = api.submit_json({"upload_id": upload_id, "tool": "video_upscale", "config": config})
    open_error(resp, 402, "insufficient_credits")
    assert server.state.jobs == {}
    # The refused request did not use up the upload.
    assert api.submit_json({"upload_id": upload_id, "tool": "video_upscale"}).status_code == 202


def test_source_url_video(sim_factory: Factory, connect: Connect, test_video: Path, tmp_path: Path) -> None:
    api = api_for(sim_factory(allow_loopback_urls=True), connect)
    with local_server(body=test_video.read_bytes(), content_type="video/mp4") as origin:
        resp = api.submit_json({"source_url": f"{origin.url}/clip.mp4", "tool": "video_upscale"})
        assert resp.status_code == 202 and resp.json()["media"] == "video"
        body = api.wait(resp.json()["job_id"], timeout=20)
    assert body["status"] == "succeeded", body
    width, height, _, _ = probe(api.download(body["job_id"]), tmp_path)
    assert (width, height) == (body["result"]["width"], body["result"]["height"]) == (128, 96)


@pytest.mark.parametrize(
    ("payload", "ctype", "code"),
    [
        (image_bytes(200, 150), "image/jpeg", "file_too_large"),
        (b"<html>nope</html>", "text/html", "unsupported_format"),
    ],
    ids=["too-large", "not-an-image"],
)
def test_fetched_source_failures(
    sim_factory: Factory, connect: Connect, payload: bytes, ctype: str, code: str
) -> None:
    server = sim_factory(allow_loopback_urls=True, open_max_image_bytes=1000)
    api = api_for(server, connect)
    with local_server(body=payload, content_type=ctype) as origin:
        resp = api.submit_json({"image_url": f"{origin.url}/photo.jpg", "tool": "upscale"})
        assert resp.status_code == 202
        body = api.wait(resp.json()["job_id"])
    assert body["status"] == "failed"
    assert body["error"]["code"] == code and body["error"]["type"] == "validation"
    assert ledger(server) == []
