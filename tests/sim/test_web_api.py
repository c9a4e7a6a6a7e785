"""Protocol tests of the simulated VanceAI web API v1 (``/web_api/v1``) against the vendor documents."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from tests.conftest import WEB_TOKEN, image_bytes
from tests.sim.helpers import (
    DENOISE,
    ENLARGE_2X,
    HOLD,
    SHARPEN,
    WEB_STATUSES,
    Web,
    decode,
    enlarge,
    local_server,
    poll,
    single,
    step,
    wait_for,
    web_error,
    workflow,
)
from vance_provider.sim import Account, Faults, SimulatorServer

Connect = Callable[..., httpx.Client]
ENDPOINTS = ["upload", "transform", "progress", "download", "point", "points/record"]
THREE_DECIMALS = re.compile(r"^\d+\.\d{3}$")


def web_for(server: SimulatorServer, connect: Connect, token: str = WEB_TOKEN) -> Web:
    return Web(connect(server), token)


def encoded(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "orange").save(buf, format=fmt)
    return buf.getvalue()


def charges(server: SimulatorServer, trans_id: str) -> list[float]:
    return [e.amount for e in server.state.charges(trans_id)]


# --- upload -------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "name"), [("JPEG", "cat.jpg"), ("PNG", "cat.png")])
def test_upload_accepts_jpg_and_png(
    shared_web: Web, shared_sim: SimulatorServer, fmt: str, name: str
) -> None:
    data = image_bytes(120, 90, fmt)
    resp = shared_web.upload(data, name)
    assert resp.status_code == 200
    body = resp.json()
    assert body["code"] == 200
    d = body["data"]
    assert re.fullmatch(r"[0-9a-f]{32}", d["uid"])
    assert d["name"].strip("'") == name
    assert (d["w"], d["h"]) == (120, 90)
    assert d["filesize"] == len(data)
    assert shared_sim.state.web_uploads[d["uid"]].path.read_bytes() == data


@pytest.mark.parametrize(
    "data",
    [encoded("GIF"), encoded("WEBP"), encoded("BMP"), b"%PDF-1.4 definitely not an image", b"\x00" * 64],
    ids=["gif", "webp", "bmp", "pdf", "zeros"],
)
def test_upload_rejects_other_formats_with_10001(
    shared_web: Web, shared_sim: SimulatorServer, data: bytes
) -> None:
    before = len(shared_sim.state.web_uploads)
    web_error(shared_web.upload(data, "thing.jpg"), 10001)
    assert len(shared_sim.state.web_uploads) == before


def test_upload_rejects_truncated_jpeg(shared_web: Web) -> None:
    data = image_bytes(200, 150)
    web_error(shared_web.upload(data[: len(data) // 2], "cut.jpg"), 10001)


def test_upload_over_10_mb_is_rejected_with_10012(shared_web: Web) -> None:
    noise = Image.frombytes("RGB", (1900, 1900), os.urandom(1900 * 1900 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG", compress_level=0)
    data = buf.getvalue()
    assert 10 * 1024 * 1024 < len(data) < 12 * 1024 * 1024
    web_error(shared_web.upload(data, "noise.png"), 10012)


def test_upload_size_limit_is_a_byte_limit(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    web = web_for(sim_factory(web_max_bytes=2000), connect)
    small, large = image_bytes(16, 16), image_bytes(200, 150)
    assert len(small) <= 2000 < len(large)
    assert web.upload(small).json()["code"] == 200
    web_error(web.upload(large), 10012)


def test_upload_over_the_megapixel_limit_is_rejected_with_10012(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    web = web_for(sim_factory(web_max_megapixels=0.001), connect)
    web_error(web.upload(image_bytes(64, 48)), 10012)  # 3072 px > 1000 px
    assert web.upload(image_bytes(30, 30)).json()["code"] == 200  # 900 px


@pytest.mark.parametrize("file_field", [None, "just a string"], ids=["absent", "not-a-file"])
def test_upload_without_file_gives_field_message(shared_web: Web, file_field: str | None) -> None:
    msg = web_error(shared_web.post("upload", file=file_field), 10001)
    assert isinstance(msg, dict) and list(msg) == ["file"]
    assert isinstance(msg["file"], list) and all(isinstance(m, str) for m in msg["file"])


# --- authentication ------------------------------------------------------------------
@pytest.mark.parametrize("path", ENDPOINTS)
def test_missing_token_is_30001_with_field_message(shared_client: httpx.Client, path: str) -> None:
    resp = shared_client.post(f"/web_api/v1/{path}", data={"trans_id": "x", "uid": "y"})
    msg = web_error(resp, 30001)
    assert msg == {"api_token": ["The api token field is required."]}


def test_missing_token_code_follows_the_other_edition_when_configured(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    client = connect(sim_factory(web_missing_token_code=10001))
    msg = web_error(client.post("/web_api/v1/point"), 10001)
    assert list(msg) == ["api_token"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_invalid_token_is_30001(shared_client: httpx.Client, path: str) -> None:
    resp = shared_client.post(f"/web_api/v1/{path}", data={"api_token": "0" * 32, "trans_id": "x"})
    web_error(resp, 30001)


def test_revoked_token_is_refused(web: Web, sim: SimulatorServer) -> None:
    assert web.post("point").json()["code"] == 200
    sim.state.revoke(WEB_TOKEN)
    web_error(web.post("point"), 30001)


def test_other_accounts_uploads_and_jobs_are_invisible(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    other = "b" * 32
    server = sim_factory(accounts=[Account(name="a"), Account(name="b", web_tokens=[other], open_keys=[])])
    mine, theirs = web_for(server, connect), web_for(server, connect, other)
    uid = mine.uid()
    web_error(theirs.transform(uid, enlarge(2)), 10011)
    trans_id = mine.start(enlarge(2))
    assert mine.wait(trans_id)["status"] == "finish"
    web_error(theirs.post("progress", trans_id=trans_id), 10001)
    web_error(theirs.download(trans_id), 10011)
    assert server.state.charges() == []


# --- transform: validation ---------------------------------------------------------------
@pytest.mark.parametrize("missing", ["uid", "jconfig"])
def test_transform_missing_field_gives_field_message(shared_web: Web, missing: str) -> None:
    fields = {"uid": shared_web.uid(), "jconfig": enlarge(2)}
    del fields[missing]
    msg = web_error(shared_web.post("transform", **fields), 10001)
    assert isinstance(msg, dict) and list(msg) == [missing]
    assert all(isinstance(m, str) for m in msg[missing])


@pytest.mark.parametrize(
    "jconfig", ["{not json", "[]", '"enlarge3"', '{"name": "enlarge3"}', '{"name": "x", "config": []}']
)
def test_transform_unparseable_jconfig_is_10013(
    shared_web: Web, shared_sim: SimulatorServer, jconfig: str
) -> None:
    uid, before = shared_web.uid(), len(shared_sim.state.jobs)
    web_error(shared_web.transform(uid, jconfig), 10013)
    assert len(shared_sim.state.jobs) == before


def test_transform_unknown_uid_is_10011(shared_web: Web) -> None:
    web_error(shared_web.transform("f" * 32, enlarge(2)), 10011)


@pytest.mark.parametrize(
    ("model", "scale", "accepted"),
    [
        ("EnlargeStandard_2x_Stable", 2, True),
        ("EnlargeStandard_2x_Stable", 4, False),
        ("EnlargeStandard_2x_Stable", "2", False),
        ("EnlargeStandard_2x_Stable", 2.0, False),
        ("EnlargeStandard_4x_Stable", 4, True),
        ("EnlargeStandard_4x_Stable", 6, True),
        ("EnlargeStandard_4x_Stable", 8, True),
        ("EnlargeStandard_4x_Stable", 2, False),
        ("EnlargeStandard_4x_Stable", "4", False),
        ("EnlargeStandard_4x_Stable", True, False),
    ],
)
def test_enlarge3_scale_rules(shared_web: Web, model: str, scale: object, accepted: bool) -> None:
    resp = shared_web.transform(shared_web.uid(), enlarge(scale, model))
    if accepted:
        assert resp.json()["code"] == 200
        assert resp.json()["data"]["status"] in WEB_STATUSES
    else:
        assert isinstance(web_error(resp, 10001), str)


@pytest.mark.parametrize(
    ("module", "scale", "factor"),
    [("chainner", "2x", 2), ("chainner", "4x", 4), ("real_esrgan", "1x", 1), ("real_esrgan", "2x", 2)],
)
def test_string_scales_of_the_anime_upscalers(shared_web: Web, module: str, scale: str, factor: int) -> None:
    _, data = shared_web.run(single(module, {"scale": scale}), image_bytes(64, 48))
    assert decode(data).size == (64 * factor, 48 * factor)


@pytest.mark.parametrize(
    ("module", "params"),
    [
        ("chainner", {"scale": 2}),
        ("chainner", {"scale": "6x"}),
        ("real_esrgan", {"scale": "3x"}),
        ("denoise", {"remove_noise": 101}),
        ("denoise", {"sharpen": "75"}),
        ("sharpen3", {"remove_blur": 1.5}),
        ("img2sr", {"strength": 0.5}),
        ("deoldify2", {"render_factor": 5}),
        ("img2anime", {"style_strength": 13}),
        ("no_such_module", {}),
    ],
)
def test_out_of_range_module_params_are_10001(
    shared_web: Web, module: str, params: dict[str, object]
) -> None:
    web_error(shared_web.transform(shared_web.uid(), single(module, params)), 10001)


@pytest.mark.parametrize(
    "first",
    [ENLARGE_2X, step("enlarge", {"scale": "2x"}), step("matting", {"model_name": "MattingStable"})],
    ids=["enlarge3", "enlarge", "matting"],
)
def test_enlarge_and_matting_must_be_the_last_step(shared_web: Web, first: dict[str, object]) -> None:
    uid = shared_web.uid()
    web_error(shared_web.transform(uid, workflow(first, DENOISE)), 10001)
    assert shared_web.transform(uid, workflow(DENOISE, first)).json()["code"] == 200


@pytest.mark.parametrize("jconfig", [enlarge(2), workflow(ENLARGE_2X)], ids=["single-step", "workflow"])
def test_both_jconfig_shapes_are_accepted(shared_web: Web, jconfig: str) -> None:
    _, data = shared_web.run(jconfig, image_bytes(64, 48))
    assert decode(data).size == (128, 96)


def test_workflow_applies_every_step_in_order(shared_web: Web) -> None:
    src = image_bytes(64, 48)
    _, enlarged = shared_web.run(workflow(ENLARGE_2X), src)
    _, denoised_enlarged = shared_web.run(workflow(DENOISE, ENLARGE_2X), src)
    a, b = decode(enlarged), decode(denoised_enlarged)
    assert a.size == b.size == (128, 96)
    assert a.tobytes() != b.tobytes()  # the denoise step ran before the enlargement


# --- out_params --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "pil", "ctype"), [("png", "PNG", "image/png"), ("jpg", "JPEG", "image/jpeg")]
)
def test_out_params_format(shared_web: Web, fmt: str, pil: str, ctype: str) -> None:
    trans_id = shared_web.start(enlarge(2, out={"format": fmt}))
    shared_web.wait(trans_id)
    resp = shared_web.download(trans_id)
    assert resp.headers["content-type"] == ctype
    assert decode(resp.content).format == pil


def test_out_params_compress_quality(shared_web: Web) -> None:
    src = image_bytes(64, 48)
    _, low = shared_web.run(enlarge(2, out={"compress": {"quality": 5}}), src)
    _, high = shared_web.run(enlarge(2, out={"compress": {"quality": 95}}), src)
    lo, hi = decode(low), decode(high)
    assert lo.format == hi.format == "JPEG"
    assert len(low) < len(high)
    assert sum(lo.quantization[0]) > 4 * sum(hi.quantization[0])  # coarser tables at low quality


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_out_params_dpi(shared_web: Web, fmt: str) -> None:
    _, data = shared_web.run(enlarge(2, out={"format": fmt, "dpi": 300}))
    dpi = decode(data).info["dpi"]
    assert dpi == pytest.approx((300, 300), abs=0.01)


def test_matting_returns_png_with_alpha(shared_web: Web) -> None:
    trans_id = shared_web.start(single("matting", {"model_name": "MattingStable"}))
    shared_web.wait(trans_id)
    resp = shared_web.download(trans_id)
    img = decode(resp.content)
    assert img.format == "PNG" and resp.headers["content-type"] == "image/png"
    assert img.mode == "RGBA"
    assert img.getchannel("A").getextrema() == (0, 255)  # a real cut-out: some pixels gone, some kept


def test_matting_with_bg_color_is_opaque(shared_web: Web) -> None:
    src = image_bytes(64, 48)
    _, cutout = shared_web.run(single("matting", {"model_name": "MattingStable"}), src)
    bg = {"bg_composed": {"bg_color": {"r": 0, "g": 255, "b": 255}}}
    _, composed = shared_web.run(single("matting", {"model_name": "MattingStable"}, bg), src)
    cut, comp = decode(cutout), decode(composed)
    assert "A" not in comp.getbands() or comp.getchannel("A").getextrema() == (255, 255)
    comp = comp.convert("RGB")
    alpha = cut.getchannel("A")
    gone = [(x, y) for y in range(cut.height) for x in range(cut.width) if alpha.getpixel((x, y)) == 0]
    assert gone
    assert all(comp.getpixel(p) == (0, 255, 255) for p in gone)


# --- statuses, progress, download -----------------------------------------------------------
def test_statuses_include_busy_when_slots_are_full(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    """One processing slot, four jobs: the test moves the simulator's clock one job time at a
    time, and a poll sees each job waiting, then busy (ready, the slot taken), in process, done."""
    server = sim_factory(max_concurrent_images=1, queue_delay=HOLD, time_per_job=HOLD)
    web = web_for(server, connect)
    ids, seen = [], set()
    for _ in range(4):
        body = web.transform(web.uid(), enlarge(2)).json()
        assert body["code"] == 200
        seen.add(body["data"]["status"])
        ids.append(body["data"]["trans_id"])
    assert seen == {"waiting"}  # their delay has not passed
    history: dict[str, list[str]] = {t: ["waiting"] for t in ids}
    for running in [*ids, None]:
        server.state.clock.advance(HOLD)  # the job in process ends, the next one starts
        statuses = poll(
            lambda: {t: web.progress(t)["status"] for t in ids},
            lambda s, running=running: (
                (s[running] == "process") if running else set(s.values()) == {"finish"}
            ),
        )
        for t, status in statuses.items():
            if history[t][-1] != status:
                history[t].append(status)
    assert history[ids[0]] == ["waiting", "process", "finish"]
    assert all(history[t] == ["waiting", "busy", "process", "finish"] for t in ids[1:])
    assert {s for h in history.values() for s in h} <= WEB_STATUSES


def test_web_sync_wait_answers_finish_at_once(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    web = web_for(sim_factory(web_sync_wait=5), connect)
    body = web.transform(web.uid(), enlarge(2)).json()
    assert body["code"] == 200 and body["data"]["status"] == "finish"
    resp = web.download(body["data"]["trans_id"])  # no polling needed
    assert decode(resp.content).size == (128, 96)


def test_without_sync_wait_transform_does_not_block(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    web = web_for(sim_factory(queue_delay=1.0), connect)
    body = web.transform(web.uid(), enlarge(2)).json()
    assert body["data"]["status"] == "waiting"
    web_error(web.download(body["data"]["trans_id"]), 10011)  # not finished yet


def test_progress_reports_string_filesize_when_finished(shared_web: Web) -> None:
    trans_id = shared_web.start(enlarge(2))
    data = shared_web.wait(trans_id)
    assert data["status"] == "finish"
    assert isinstance(data["filesize"], str) and data["filesize"].isdigit()
    assert int(data["filesize"]) == len(shared_web.download(trans_id).content)


def test_progress_of_unknown_trans_id_is_an_error(shared_web: Web) -> None:
    web_error(shared_web.post("progress", trans_id="0" * 32), 10001)
    msg = web_error(shared_web.post("progress"), 10001)
    assert list(msg) == ["trans_id"]


@pytest.mark.parametrize(("scale", "model"), [(2, "2x"), (4, "4x"), (6, "4x"), (8, "4x")])
def test_download_returns_the_enlarged_image(shared_web: Web, scale: int, model: str) -> None:
    trans_id = shared_web.start(enlarge(scale, f"EnlargeStandard_{model}_Stable"), image_bytes(64, 48))
    shared_web.wait(trans_id)
    resp = shared_web.download(trans_id)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert decode(resp.content).size == (64 * scale, 48 * scale)


def test_download_of_unknown_trans_id_is_10011(shared_web: Web) -> None:
    web_error(shared_web.download("0" * 32), 10011)


# --- credits ------------------------------------------------------------------------------
def point(web: Web) -> dict[str, str]:
    body = web.post("point").json()
    assert body["code"] == 200
    data = body["data"]
    assert THREE_DECIMALS.match(data["max_num"]) and THREE_DECIMALS.match(data["used_num"]), data
    return data


def test_first_download_charges_one_credit_and_repeats_are_free(web: Web, sim: SimulatorServer) -> None:
    assert point(web) == {"max_num": "1000.000", "used_num": "0.000"}
    trans_id = web.start(enlarge(2))
    web.wait(trans_id)
    assert charges(sim, trans_id) == []  # finishing costs nothing: the download does
    assert point(web)["used_num"] == "0.000"
    first = web.download(trans_id).content
    assert charges(sim, trans_id) == [1.0]
    assert point(web) == {"max_num": "1000.000", "used_num": "1.000"}
    assert web.download(trans_id).content == first
    assert charges(sim, trans_id) == [1.0]
    assert point(web)["used_num"] == "1.000"
    assert sim.state.double_charges() == []


def test_sharpener_workflow_costs_two_credits(web: Web, sim: SimulatorServer) -> None:
    codeformer = step("CodeFormer", {"model_name": "CodeFormerStable"}, {"compress": {"quality": 80}})
    trans_id, _ = web.run(workflow(SHARPEN, codeformer, name="va_sharpen_standard"))
    web.download(trans_id)
    assert charges(sim, trans_id) == [2.0]
    assert point(web)["used_num"] == "2.000"


def test_download_without_enough_credits_is_30004(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    server = sim_factory(accounts=[Account(credits=1.5)])
    web = web_for(server, connect)
    sharpen = web.start(workflow(SHARPEN))
    web.wait(sharpen)
    web_error(web.download(sharpen), 30004)  # costs 2, 1.5 left
    assert server.state.charges() == []
    denoise = web.start(workflow(DENOISE))
    web.wait(denoise)
    assert decode(web.download(denoise).content).format == "JPEG"
    assert point(web) == {"max_num": "1.500", "used_num": "1.000"}
    again = web.start(workflow(DENOISE))
    web.wait(again)
    web_error(web.download(again), 30004)  # 0.5 left
    assert [e.amount for e in server.state.charges()] == [1.0]


def test_points_record_pagination_newest_first(web: Web) -> None:
    first = web.start(single("denoise", {"model_name": "DenoiseStable"}))
    second = web.start(enlarge(2))
    third = web.start(single("crease_repair", {"model_name": "CreaseRepairStable"}))
    for trans_id in (first, second, third):
        web.wait(trans_id)
    web.download(first)
    web.download(second)

    pages = []
    for page in (1, 2, 3):
        body = web.post("points/record", page=page, limit=2).json()
        assert body["code"] == 200
        data = body["data"]
        assert (data["current_page"], data["last_page"], data["per_page"], data["total"]) == (page, 3, 2, 5)
        pages.append(data["datas"])
    assert [len(p) for p in pages] == [2, 2, 1]
    rows = [row for p in pages for row in p]
    assert [(r["point_type"], r["job"]) for r in rows] == [
        ("download", "enlarge3"),
        ("download", "denoise"),
        ("job", "crease_repair"),
        ("job", "enlarge3"),
        ("job", "denoise"),
    ]
    for row in rows:
        assert THREE_DECIMALS.match(row["point"]) and THREE_DECIMALS.match(row["balance"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", row["created_at"])
        assert isinstance(row["info"], str)
    assert [r["point"] for r in rows[:2]] == ["1.000", "1.000"]
    assert [r["balance"] for r in rows[:2]] == ["998.000", "999.000"]

    default = web.post("points/record").json()["data"]
    assert (default["current_page"], default["per_page"], default["last_page"], default["total"]) == (
        1,
        20,
        1,
        5,
    )
    assert default["datas"] == rows
    assert web.post("points/record", page=4, limit=2).json()["data"]["datas"] == []


# --- GET with query parameters -------------------------------------------------------------
@pytest.mark.parametrize("path", ["progress", "download", "point", "points/record"])
def test_get_with_query_parameters_is_accepted(web: Web, client: httpx.Client, path: str) -> None:
    trans_id, data = web.run(enlarge(2))
    resp = client.get(f"/web_api/v1/{path}", params={"api_token": WEB_TOKEN, "trans_id": trans_id})
    assert resp.status_code == 200
    if path == "download":
        assert resp.content == data
    else:
        body = resp.json()
        assert body["code"] == 200
        if path == "progress":
            assert body["data"]["status"] == "finish"
        if path == "point":
            assert body["data"]["used_num"] == "1.000"


def test_upload_and_transform_are_post_only(shared_client: httpx.Client) -> None:
    for path in ("upload", "transform"):
        assert shared_client.get(f"/web_api/v1/{path}", params={"api_token": WEB_TOKEN}).status_code == 405


# --- webhooks ---------------------------------------------------------------------------------
def test_https_webhook_is_accepted_and_answers_webhook(shared_web: Web) -> None:
    # Loopback on a closed port: the simulator's delivery attempts go nowhere.
    resp = shared_web.transform(shared_web.uid(), enlarge(2), webhook="https://127.0.0.1:1/hook")
    body = resp.json()
    assert body["code"] == 200 and body["data"]["status"] == "webhook"
    assert shared_web.wait(body["data"]["trans_id"])["status"] == "finish"


@pytest.mark.parametrize("hook", ["http://127.0.0.1:9/hook", "ftp://127.0.0.1/hook", "not a url"])
def test_non_https_webhook_is_refused_by_default(
    shared_web: Web, shared_sim: SimulatorServer, hook: str
) -> None:
    uid, before = shared_web.uid(), len(shared_sim.state.jobs)
    msg = web_error(shared_web.transform(uid, enlarge(2), webhook=hook), 10001)
    assert list(msg) == ["webhook"]
    assert len(shared_sim.state.jobs) == before


def test_http_webhook_switch_allows_loopback_only(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    web = web_for(sim_factory(allow_http_webhooks=True), connect)
    uid = web.uid()
    with local_server() as hook:
        body = web.transform(uid, enlarge(2), webhook=f"{hook.url}/hook").json()
        assert body["code"] == 200 and body["data"]["status"] == "webhook"
        web_error(web.transform(uid, enlarge(2), webhook="http://example.invalid/hook"), 10001)


def test_poll_retry_after_only_while_the_job_runs(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    """The ``poll_retry_after`` knob: a hint for the next poll on answers about a running job."""
    server = sim_factory(poll_retry_after=7, time_per_job=HOLD)
    web = web_for(server, connect)
    trans_id = web.start(enlarge(2))
    poll(lambda: web.progress(trans_id), lambda d: d["status"] == "process")  # its end is on the clock
    running = web.post("progress", trans_id=trans_id)
    assert running.json()["data"]["status"] == "process" and running.headers["retry-after"] == "7"
    server.state.clock.advance(HOLD)
    assert web.wait(trans_id)["status"] == "finish"
    assert "retry-after" not in web.post("progress", trans_id=trans_id).headers


@pytest.mark.parametrize(
    ("script", "default", "expected"),
    [
        ([], 200, [200]),
        ([500, 500], 200, [500, 500, 200]),
        ([503], 204, [503, 204]),
        ([], 500, [500, 500, 500]),
        ([], 404, [404, 404, 404]),
    ],
    ids=["ok-at-once", "two-failures", "one-failure", "always-500", "always-404"],
)
def test_webhook_delivery_and_retries(
    sim_factory: Callable[..., SimulatorServer],
    connect: Connect,
    script: list[int],
    default: int,
    expected: list[int],
) -> None:
    server = sim_factory(allow_http_webhooks=True, webhook_retry_delay=0.01)
    web = web_for(server, connect)
    with local_server(script, default) as hook:
        trans_id = web.start(enlarge(2), webhook=f"{hook.url}/hook")
        # The delivery is over (no attempt left to make, right or wrong) once it has begun and
        # the simulator counts none in flight.
        wait_for(lambda: len(hook.received) >= 1 and server.state.webhooks_in_flight == 0)
        assert len(hook.received) == len(expected)
    deliveries = [d for d in server.state.webhook_deliveries if d["trans_id"] == trans_id]
    assert [d["status"] for d in deliveries] == expected
    assert [d["attempt"] for d in deliveries] == list(range(1, len(expected) + 1))
    filesize = web.progress(trans_id)["filesize"]
    for req in hook.received:
        assert req.method == "POST" and req.path == "/hook"
        assert "api_token" not in req.body.decode()
        assert json.loads(req.body) == {
            "code": 200,
            "data": {"trans_id": trans_id, "status": "finish", "filesize": filesize},
        }


# --- failed jobs --------------------------------------------------------------------------------
def test_failed_job_is_fatal_and_cannot_be_downloaded(
    sim_factory: Callable[..., SimulatorServer], connect: Connect
) -> None:
    server = sim_factory(faults=Faults(fail_job=1.0))
    web = web_for(server, connect)
    trans_id = web.start(enlarge(2))
    assert web.wait(trans_id)["status"] == "fatal"
    web_error(web.download(trans_id), 10011)
    assert server.state.charges() == []
    assert point(web)["used_num"] == "0.000"


# --- the request log and the token ------------------------------------------------------------
def test_token_sent_by_post_never_appears_in_a_logged_url(
    web: Web, sim: SimulatorServer, client: httpx.Client
) -> None:
    trans_id, _ = web.run(enlarge(2))
    web.post("point")
    web.post("points/record", page=1)
    logged = {r.path for r in sim.state.requests}
    assert {f"/web_api/v1/{p}" for p in ENDPOINTS} <= logged
    assert not [r.url for r in sim.state.requests if WEB_TOKEN in r.url]

    client.get("/web_api/v1/progress", params={"api_token": WEB_TOKEN, "trans_id": trans_id})
    leaked = [r.url for r in sim.state.requests if WEB_TOKEN in r.url]
    assert len(leaked) == 1 and leaked[0].startswith("/web_api/v1/progress?")
