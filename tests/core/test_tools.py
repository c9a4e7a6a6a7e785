"""The tool catalogue: every web module and Open API tool of the documents, valid and invalid configs.

Nothing here touches the network: ``resolve`` and ``validate_jconfig`` must reject a bad
config before anything is uploaded, with a subclass of ``InvalidInputError`` whose
message names the problem.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from vance_provider.core import resolve
from vance_provider.core.api.errors import InvalidConfigError, InvalidInputError, UnknownToolError
from vance_provider.core.tools import FRIENDLY, OPEN_TOOLS, WEB_MODULES, validate_jconfig

CN = [
    {"image_uid": "3f8484a52c47b9cc0c34067b5bdf08d3", "cn_name": "cartoon_tile"},
    {"image_uid": "3f8484a52c47b9cc0c34067b5bdf08d3", "cn_name": "cartoon_lineart"},
]


def step(
    module: str, params: dict[str, Any] | None = None, out: dict[str, Any] | None = None
) -> dict[str, Any]:
    s: dict[str, Any] = {"module": module, "module_params": params or {}}
    if out is not None:
        s["out_params"] = out
    return s


def one(
    module: str, params: dict[str, Any] | None = None, out: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"name": module, "config": step(module, params, out)}


def flow(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "workflow", "config": [{"name": s["module"], "config": s} for s in steps]}


# --- the web API v1: friendly names and modules ----------------------------------------------------
WEB_VALID: list[tuple[str, dict[str, Any], str, int]] = [
    # (tool, config, module sent, output scale)
    ("upscale", {}, "enlarge3", 2),
    ("upscale", {"scale": 2}, "enlarge3", 2),
    ("upscale", {"scale": 4}, "enlarge3", 4),
    ("upscale", {"scale": 6, "suppress_noise": 40, "remove_blur": 60}, "enlarge3", 6),
    ("upscale", {"scale": 8, "suppress_noise": 0, "remove_blur": 100}, "enlarge3", 8),
    ("enlarge3", {"model_name": "EnlargeStandard_2x_Stable", "scale": 2}, "enlarge3", 2),
    ("enlarge3", {"model_name": "EnlargeStandard_4x_Stable", "scale": 8}, "enlarge3", 8),
    (
        "enlarge",
        {"model_name": "EnlargeStable", "scale": "2x", "suppress_noise": 26, "remove_blur": 26},
        "enlarge",
        2,
    ),
    ("enlarge", {"scale": "4x"}, "enlarge", 4),
    ("denoise", {}, "denoise", 1),
    (
        "denoise",
        {"model_name": "DenoiseStable", "auto_params": True, "remove_noise": 75, "sharpen": 75},
        "denoise",
        1,
    ),
    ("denoise", {"remove_noise": 0, "sharpen": 100}, "denoise", 1),
    (
        "sharpen",
        {
            "remove_blur": 0.5,
            "suppress_noise": 0.5,
            "remove_artifacts": 0.5,
            "autoparams": True,
            "automodel": True,
            "blur_type": 1,
        },
        "sharpen3",
        1,
    ),
    ("sharpen3", {"remove_blur": 0, "suppress_noise": 1, "remove_artifacts": 1.0}, "sharpen3", 1),
    ("remove_bg", {}, "matting", 1),
    ("matting", {"model_name": "MattingStable"}, "matting", 1),
    ("chainner", {"model_name": "Anime_4x_AnimeSharp", "scale": "2x"}, "chainner", 2),
    ("chainner", {"scale": "8x"}, "chainner", 8),
    ("anime_upscale", {"scale": "1x"}, "real_esrgan", 1),
    ("real_esrgan", {"model_name": "RealEsrganStable", "scale": "6x"}, "real_esrgan", 6),
    ("restore", {}, "crease_repair", 1),
    ("crease_repair", {"model_name": "CreaseRepairStable"}, "crease_repair", 1),
    ("img2sr", {"model_name": "style_sr_512", "face_enhancer": True, "strength": 0.9}, "img2sr", 1),
    ("img2sr", {"strength": 0.8}, "img2sr", 1),
    ("img2sr", {"strength": 1.0}, "img2sr", 1),
    ("img2sr", {"strength": 1}, "img2sr", 1),
    # img2anime, the older form (description, control_mode, style_strength) ...
    (
        "cartoonize",
        {"model_name": "style1", "description": "", "control_mode": 0, "style_strength": 11},
        "img2anime",
        1,
    ),
    (
        "img2anime",
        {"model_name": "style6", "description": "x" * 140, "control_mode": 2, "style_strength": 0},
        "img2anime",
        1,
    ),
    ("img2anime", {"style_strength": 12, "control_mode": 1}, "img2anime", 1),
    # ... and the newer one (prompt, overwrite, denoising_strength, cn_configs, 12 styles)
    (
        "img2anime",
        {
            "model_name": "Ghibli_girl",
            "prompt": "a girl in a field",
            "overwrite": False,
            "denoising_strength": 0.75,
            "cn_configs": CN,
        },
        "img2anime",
        1,
    ),
    (
        "img2anime",
        {
            "model_name": "us_comic_boy",
            "prompt": "p" * 140,
            "overwrite": True,
            "denoising_strength": 0,
            "cn_configs": [{"image_uid": "u1", "cn_name": "cartoon_canny"}],
        },
        "img2anime",
        1,
    ),
    (
        "img2anime",
        {
            "model_name": "disney_girl",
            "denoising_strength": 1.0,
            "cn_configs": [{"image_uid": "u1", "cn_name": "more_real_lineart"}],
        },
        "img2anime",
        1,
    ),
    ("animegan2", {"model_name": "Animegan2Stable", "single_face": True}, "animegan2", 1),
    (
        "sd_recolor",
        {"model_name": "sd_recolor", "prompt": "blue skirt", "negative_prompt": ""},
        "sd_recolor",
        1,
    ),
    ("colorize", {"model_name": "DeoldifyArtistic", "render_factor": 30}, "deoldify2", 1),
    ("deoldify2", {"render_factor": 10}, "deoldify2", 1),
    ("deoldify2", {"render_factor": 70}, "deoldify2", 1),
    ("face_enhance", {}, "CodeFormer", 1),
    ("CodeFormer", {"model_name": "CodeFormerStable"}, "CodeFormer", 1),
    # out_params on the (only, so last) step
    (
        "upscale",
        {"scale": 2, "out_params": {"compress": {"quality": 95}, "dpi": 300, "format": "png"}},
        "enlarge3",
        2,
    ),
    (
        "upscale",
        {"scale": 2, "out_params": {"compress": {"quality": 0}, "dpi": 2000, "format": "jpg"}},
        "enlarge3",
        2,
    ),
    ("remove_bg", {"out_params": {"bg_composed": {"bg_color": {"r": 0, "g": 255, "b": 255}}}}, "matting", 1),
]


@pytest.mark.parametrize(
    ("tool", "config", "module", "scale"), WEB_VALID, ids=[f"{t}-{i}" for i, (t, *_) in enumerate(WEB_VALID)]
)
def test_web_valid_configs(tool: str, config: dict[str, Any], module: str, scale: int) -> None:
    call = resolve(tool, config, api="web")
    assert call.api == "web" and call.media == "image"
    steps = call.jconfig["config"]  # type: ignore[index]
    assert isinstance(steps, dict) and steps["module"] == module
    params = steps["module_params"]
    models = WEB_MODULES[module]["model_name"].choices
    assert params["model_name"] in (models or ("EnlargeStable",))
    for key, value in config.items():
        if key != "out_params":
            assert params[key] == value
    assert call.scale == scale
    # the jconfig that will be sent survives a JSON round trip and the validator
    assert validate_jconfig(json.dumps(call.jconfig)) == call.jconfig


def test_every_web_module_passes_as_a_raw_jconfig() -> None:
    for module in WEB_MODULES:
        cfg = {"scale": "2x"} if module in ("enlarge", "chainner", "real_esrgan") else {}
        jconfig = one(module, cfg | ({"scale": 2} if module == "enlarge3" else {}))
        call = resolve(module, jconfig=jconfig, api="web")
        assert call.jconfig["config"]["module"] == module  # type: ignore[index]


def test_web_upscale_model_follows_scale() -> None:
    assert (
        resolve("upscale", {"scale": 2}, api="web").jconfig["config"]["module_params"]["model_name"]
        == "EnlargeStandard_2x_Stable"
    )  # type: ignore[index]
    for s in (4, 6, 8):
        params = resolve("upscale", {"scale": s}, api="web").jconfig["config"]["module_params"]  # type: ignore[index]
        assert params == {"scale": s, "model_name": "EnlargeStandard_4x_Stable"}


def test_web_estimates_and_names() -> None:
    sharpen = resolve("sharpen", {}, api="web")
    assert sharpen.estimate() == 2.0  # the sharpener costs 2 credits
    assert sharpen.jconfig["name"] == "va_sharpen_standard"  # type: ignore[index]
    assert resolve("colorize", {}, api="web").jconfig["name"] == "colorize"  # type: ignore[index]
    assert resolve("upscale", {"scale": 8}, api="web").estimate() == 1.0
    assert resolve("upscale", {}, api="web", output_format="png").output_format == "png"
    call = resolve("upscale", {}, api="web", output_format="jpeg")
    assert call.jconfig["config"]["out_params"] == {"format": "jpg"}  # type: ignore[index]


WEB_INVALID: list[tuple[str, dict[str, Any], type[InvalidInputError], str]] = [
    # enlarge3: int scale, and the scale must fit the model
    ("upscale", {"scale": 3}, InvalidConfigError, "scale=3"),
    ("upscale", {"scale": "4"}, InvalidConfigError, "scale"),
    ("upscale", {"scale": "4x"}, InvalidConfigError, "scale"),
    ("upscale", {"scale": 4.0}, InvalidConfigError, "scale"),
    ("upscale", {"scale": True}, InvalidConfigError, "scale"),
    (
        "upscale",
        {"scale": 4, "model_name": "EnlargeStandard_2x_Stable"},
        InvalidConfigError,
        "does not fit model",
    ),
    (
        "upscale",
        {"scale": 2, "model_name": "EnlargeStandard_4x_Stable"},
        InvalidConfigError,
        "does not fit model",
    ),
    ("enlarge3", {"model_name": "EnlargeStandard_8x_Stable", "scale": 8}, InvalidConfigError, "model_name"),
    (
        "upscale",
        {"scale": 2, "suppress_noise": 101},
        InvalidConfigError,
        "suppress_noise=101 is out of range",
    ),
    ("upscale", {"scale": 2, "remove_blur": -1}, InvalidConfigError, "remove_blur=-1 is out of range"),
    ("upscale", {"scale": 2, "remove_blur": "60"}, InvalidConfigError, "remove_blur must be int"),
    ("enlarge", {"scale": 2}, InvalidConfigError, "scale must be str"),
    ("enlarge", {"scale": "3x"}, InvalidConfigError, "scale='3x'"),
    # denoise
    ("denoise", {"remove_noise": 150}, InvalidConfigError, "remove_noise=150 is out of range"),
    ("denoise", {"sharpen": -5}, InvalidConfigError, "sharpen=-5 is out of range"),
    ("denoise", {"auto_params": "yes"}, InvalidConfigError, "auto_params must be bool"),
    ("denoise", {"model_name": "DenoiseFast"}, InvalidConfigError, "model_name='DenoiseFast'"),
    ("denoise", {"strength": 1}, InvalidConfigError, "unknown option 'strength'"),
    # sharpen3: 0 - 1.00
    ("sharpen", {"remove_blur": 1.5}, InvalidConfigError, "remove_blur=1.5 is out of range"),
    ("sharpen", {"suppress_noise": -0.1}, InvalidConfigError, "suppress_noise=-0.1 is out of range"),
    ("sharpen3", {"remove_artifacts": 2}, InvalidConfigError, "remove_artifacts=2 is out of range"),
    ("sharpen3", {"remove_blur": 50}, InvalidConfigError, "remove_blur=50 is out of range"),
    ("sharpen3", {"autoparams": 1}, InvalidConfigError, "autoparams must be bool"),
    # img2sr: 0.80 ~ 1.00
    ("img2sr", {"strength": 0.7}, InvalidConfigError, "strength=0.7 is out of range"),
    ("img2sr", {"strength": 1.1}, InvalidConfigError, "strength=1.1 is out of range"),
    ("img2sr", {"face_enhancer": "true"}, InvalidConfigError, "face_enhancer must be bool"),
    # deoldify2: 10 - 70
    ("colorize", {"render_factor": 5}, InvalidConfigError, "render_factor=5 is out of range"),
    ("deoldify2", {"render_factor": 71}, InvalidConfigError, "render_factor=71 is out of range"),
    ("deoldify2", {"render_factor": 30.5}, InvalidConfigError, "render_factor must be int"),
    # img2anime, old and new forms
    ("img2anime", {"style_strength": 13}, InvalidConfigError, "style_strength=13 is out of range"),
    ("img2anime", {"style_strength": -1}, InvalidConfigError, "style_strength=-1 is out of range"),
    ("img2anime", {"control_mode": 3}, InvalidConfigError, "control_mode=3 is not allowed"),
    ("img2anime", {"description": "x" * 141}, InvalidConfigError, "description is longer than 140"),
    ("img2anime", {"prompt": "p" * 141}, InvalidConfigError, "prompt is longer than 140"),
    ("img2anime", {"denoising_strength": 1.5}, InvalidConfigError, "denoising_strength=1.5 is out of range"),
    ("img2anime", {"overwrite": "no"}, InvalidConfigError, "overwrite must be bool"),
    ("cartoonize", {"model_name": "style7"}, InvalidConfigError, "model_name='style7' is not allowed"),
    ("cartoonize", {"model_name": "CartoonizeStable"}, InvalidConfigError, "model_name='CartoonizeStable'"),
    ("img2anime", {"cn_configs": [{"cn_name": "cartoon_tile"}]}, InvalidConfigError, "image_uid"),
    (
        "img2anime",
        {"cn_configs": [{"image_uid": "u", "cn_name": "cartoon_blur"}]},
        InvalidConfigError,
        "cn_name",
    ),
    ("img2anime", {"cn_configs": ["cartoon_tile"]}, InvalidConfigError, "cn_configs"),
    (
        "img2anime",
        {"cn_configs": {"image_uid": "u", "cn_name": "cartoon_tile"}},
        InvalidConfigError,
        "cn_configs must be list",
    ),
    # the anime upscalers take strings
    ("chainner", {"scale": "6x"}, InvalidConfigError, "scale='6x' is not allowed"),
    ("chainner", {"scale": 4}, InvalidConfigError, "scale must be str"),
    ("anime_upscale", {"scale": "3x"}, InvalidConfigError, "scale='3x' is not allowed"),
    ("animegan2", {"single_face": "yes"}, InvalidConfigError, "single_face must be bool"),
    ("sd_recolor", {"prompt": 5}, InvalidConfigError, "prompt must be str"),
    ("matting", {"scale": 2}, InvalidConfigError, "unknown option 'scale'"),
    ("face_enhance", {"strength": 0.9}, InvalidConfigError, "unknown option 'strength'"),
    # out_params
    ("upscale", {"out_params": {"compress": {"quality": 101}}}, InvalidConfigError, "compress.quality=101"),
    ("upscale", {"out_params": {"compress": 95}}, InvalidConfigError, "compress"),
    ("upscale", {"out_params": {"dpi": 2001}}, InvalidConfigError, "dpi=2001 is out of range"),
    ("upscale", {"out_params": {"format": "webp"}}, InvalidConfigError, "format='webp' is not allowed"),
    (
        "remove_bg",
        {"out_params": {"bg_composed": {"bg_color": {"r": 256, "g": 0, "b": 0}}}},
        InvalidConfigError,
        "bg_color.r=256",
    ),
    (
        "remove_bg",
        {"out_params": {"bg_composed": {"bg_color": {"r": 0, "g": 0}}}},
        InvalidConfigError,
        "bg_color.b",
    ),
    ("remove_bg", {"out_params": {"bg_composed": "white"}}, InvalidConfigError, "bg_composed"),
    ("upscale", {"out_params": {"resize": 2}}, InvalidConfigError, "unknown out_params key 'resize'"),
    ("upscale", {"out_params": ["format", "png"]}, InvalidConfigError, "out_params must be a mapping"),
    # unknown and one-API-only tools
    ("warp_drive", {}, UnknownToolError, "'warp_drive' is unknown"),
    ("passport_photo", {}, UnknownToolError, "exists on the Open API v1"),
    ("custom", {"prompt": "x"}, UnknownToolError, "exists on the Open API v1"),
    ("video_upscale", {}, UnknownToolError, "exists on the Open API v1"),
    ("video_hdr", {}, UnknownToolError, "exists on the Open API v1"),
    ("video_face_enhance", {}, UnknownToolError, "exists on the Open API v1"),
]


@pytest.mark.parametrize(
    ("tool", "config", "error", "needle"),
    WEB_INVALID,
    ids=[f"{t}-{i}" for i, (t, *_) in enumerate(WEB_INVALID)],
)
def test_web_invalid_configs(tool: str, config: dict[str, Any], error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as info:
        resolve(tool, config, api="web")
    assert isinstance(info.value, InvalidInputError)
    assert needle in str(info.value)


# --- raw jconfig: one step or a workflow, as a dict or a JSON string --------------------------------
DOC_WORKFLOW = {  # the two-step example of the document, verbatim
    "config": [
        {
            "name": "va_sharpen_standard",
            "config": {
                "module": "sharpen3",
                "module_params": {
                    "model_name": "SharpenGeneralStable",
                    "blur_type": 1,
                    "remove_blur": 0.5,
                    "suppress_noise": 0.5,
                    "remove_artifacts": 0.5,
                    "autoparams": True,
                    "automodel": True,
                },
            },
        },
        {
            "name": "CodeFormer",
            "config": {
                "module": "CodeFormer",
                "module_params": {"model_name": "CodeFormerStable"},
                "out_params": {"compress": {"quality": 80}},
            },
        },
    ],
    "name": "va_sharpen_standard",
}
OLD_ENLARGE = {
    "job": "enlarge",
    "config": {
        "module": "enlarge",
        "module_params": {
            "model_name": "EnlargeStable",
            "suppress_noise": 26,
            "remove_blur": 26,
            "scale": "2x",
        },
        "out_params": {},
    },
}
NEW_IMG2ANIME_TOP_LEVEL_CN = {
    "name": "img2anime",
    "config": {
        "module": "img2anime",
        "module_params": {
            "model_name": "style1",
            "prompt": "",
            "overwrite": False,
            "denoising_strength": 0.75,
        },
    },
    "cn_configs": CN,
}

JCONFIG_VALID: list[tuple[str, dict[str, Any], int, float]] = [
    # (id, jconfig, scale, estimate)
    ("doc-workflow", DOC_WORKFLOW, 1, 2.0),
    (
        "doc-enlarge3",
        one(
            "enlarge3",
            {"model_name": "EnlargeStandard_2x_Stable", "suppress_noise": 40, "remove_blur": 60, "scale": 2},
        ),
        2,
        1.0,
    ),
    ("old-enlarge", OLD_ENLARGE, 2, 1.0),
    (
        "animegan-job-key",
        {
            "job": "animegan",
            "config": step("animegan2", {"model_name": "Animegan2Stable", "single_face": True}),
        },
        1,
        1.0,
    ),
    ("new-img2anime", NEW_IMG2ANIME_TOP_LEVEL_CN, 1, 1.0),
    (
        "denoise-then-enlarge",
        flow(
            step("denoise", {"remove_noise": 50}),
            step("enlarge3", {"model_name": "EnlargeStandard_4x_Stable", "scale": 4}, {"format": "png"}),
        ),
        4,
        1.0,
    ),
    (
        "anime-x2-then-enlarge-x2",
        flow(
            step("real_esrgan", {"scale": "2x"}),
            step("enlarge3", {"model_name": "EnlargeStandard_2x_Stable", "scale": 2}),
        ),
        4,
        1.0,
    ),
    (
        "restore-then-matting",
        flow(
            step("crease_repair"),
            step("matting", {}, {"bg_composed": {"bg_color": {"r": 1, "g": 2, "b": 3}}}),
        ),
        1,
        1.0,
    ),
]


@pytest.mark.parametrize(
    ("jconfig", "scale", "estimate"), [c[1:] for c in JCONFIG_VALID], ids=[c[0] for c in JCONFIG_VALID]
)
@pytest.mark.parametrize("as_string", [False, True], ids=["dict", "str"])
def test_raw_jconfig_valid(jconfig: dict[str, Any], scale: int, estimate: float, as_string: bool) -> None:
    raw = json.dumps(jconfig) if as_string else jconfig
    assert validate_jconfig(raw) == jconfig
    call = resolve("", jconfig=raw, api="web")
    assert call.jconfig == jconfig
    assert call.scale == scale
    assert call.estimate() == estimate


def test_raw_jconfig_output_format_from_last_step() -> None:
    call = resolve("x", jconfig=JCONFIG_VALID[5][1], api="web")
    assert call.output_format == "png"
    assert call.tool == "x"
    assert resolve("", jconfig=DOC_WORKFLOW, api="web").tool == "va_sharpen_standard"


JCONFIG_INVALID: list[tuple[str, Any, type[InvalidInputError], str]] = [
    (
        "enlarge-first",
        flow(step("enlarge3", {"scale": 2}), step("denoise")),
        InvalidConfigError,
        "enlarge3 must be the last step",
    ),
    (
        "old-enlarge-first",
        flow(step("enlarge", {"scale": "2x"}), step("CodeFormer")),
        InvalidConfigError,
        "enlarge must be the last step",
    ),
    (
        "matting-first",
        flow(step("matting"), step("CodeFormer")),
        InvalidConfigError,
        "matting must be the last step",
    ),
    (
        "out-params-not-last",
        flow(step("denoise", {}, {"format": "png"}), step("CodeFormer")),
        InvalidConfigError,
        "out_params belong on the last step",
    ),
    ("empty-workflow", {"name": "x", "config": []}, InvalidConfigError, "no steps"),
    ("no-config", {"name": "x"}, InvalidConfigError, "needs a 'config'"),
    ("config-is-string", {"name": "x", "config": "enlarge3"}, InvalidConfigError, "needs a 'config'"),
    (
        "step-without-config",
        {"name": "x", "config": [{"module": "denoise"}]},
        InvalidConfigError,
        "step 1 needs a 'config' mapping",
    ),
    (
        "second-step-bad",
        flow(step("denoise"), step("sharpen3", {"remove_blur": 3})),
        InvalidConfigError,
        "jconfig step 2 (sharpen3): remove_blur=3 is out of range",
    ),
    ("not-json", '{"name": "x", "config": ', InvalidConfigError, "not valid JSON"),
    ("json-list", "[1, 2]", InvalidConfigError, "needs a 'config'"),
    ("unknown-module", one("enlarge9", {}), UnknownToolError, "unknown web API module 'enlarge9'"),
    ("unknown-module-in-flow", flow(step("denoise"), step("teleport")), UnknownToolError, "'teleport'"),
    (
        "enlarge3-no-scale",
        one("enlarge3", {"model_name": "EnlargeStandard_2x_Stable"}),
        InvalidConfigError,
        "scale is required",
    ),
    (
        "enlarge3-string-scale",
        one("enlarge3", {"model_name": "EnlargeStandard_2x_Stable", "scale": "2"}),
        InvalidConfigError,
        "scale must be int",
    ),
    (
        "top-level-cn-bad-name",
        {**NEW_IMG2ANIME_TOP_LEVEL_CN, "cn_configs": [{"image_uid": "u", "cn_name": "zzz"}]},
        InvalidConfigError,
        "cn_name",
    ),
    (
        "top-level-cn-no-uid",
        {**NEW_IMG2ANIME_TOP_LEVEL_CN, "cn_configs": [{"cn_name": "cartoon_tile"}]},
        InvalidConfigError,
        "image_uid",
    ),
]


@pytest.mark.parametrize(
    ("jconfig", "error", "needle"), [c[1:] for c in JCONFIG_INVALID], ids=[c[0] for c in JCONFIG_INVALID]
)
def test_raw_jconfig_invalid(jconfig: Any, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as info:
        validate_jconfig(jconfig)
    assert isinstance(info.value, InvalidInputError)
    assert needle in str(info.value)
    raw = json.dumps(jconfig) if isinstance(jconfig, dict) else jconfig
    with pytest.raises(error):
        resolve("x", jconfig=raw, api="web")


def test_jconfig_is_for_the_web_api_only() -> None:
    with pytest.raises(InvalidConfigError, match="web API v1 only"):
        resolve("upscale", jconfig=one("enlarge3", {"scale": 2}), api="open")


# --- the Open API v1 tools ------------------------------------------------------------------------
OPEN_VALID: list[tuple[str, dict[str, Any], str | None, str, str, int]] = [
    # (tool, config, output_format, media, sent format, scale)
    ("upscale", {}, None, "image", "jpg", 2),
    ("upscale", {"scale": 4, "face_enhance": True}, "jpg", "image", "jpg", 4),
    ("upscale", {"scale": 8}, "png", "image", "png", 8),
    ("sharpen", {"face_enhance": False}, "webp", "image", "webp", 1),
    ("denoise", {"face_enhance": True}, "jpeg", "image", "jpg", 1),
    ("remove_bg", {}, "png", "image", "png", 1),
    ("restore", {"face_enhance": True}, None, "image", "jpg", 1),
    ("cartoonize", {"style": "anime", "face_enhance": False}, None, "image", "jpg", 1),
    ("passport_photo", {}, None, "image", "jpg", 1),
    ("custom", {"prompt": "make it vintage", "face_enhance": True}, None, "image", "jpg", 1),
    ("video_upscale", {"scale": 2}, None, "video", "mp4", 2),
    ("video_upscale", {"scale": 4, "fps": 30}, None, "video", "mp4", 4),
    ("video_upscale", {"scale": 2, "codec": "h264"}, None, "video", "mp4", 2),  # the document's own example
    (
        "video_upscale",
        {"scale": 2, "source_width": 1920, "source_height": 1080, "duration": 12.5},
        None,
        "video",
        "mp4",
        2,
    ),
    ("video_hdr", {"quality": "high", "codec": "h265", "hdr_color_gamut": "bt2020"}, None, "video", "mp4", 1),
    (
        "video_face_enhance",
        {"face_enhanced_mode": "portrait", "quality": "low", "codec": "h264"},
        None,
        "video",
        "mp4",
        1,
    ),
]


@pytest.mark.parametrize(
    ("tool", "config", "fmt", "media", "sent", "scale"),
    OPEN_VALID,
    ids=[f"{t}-{i}" for i, (t, *_) in enumerate(OPEN_VALID)],
)
def test_open_valid_configs(
    tool: str, config: dict[str, Any], fmt: str | None, media: str, sent: str, scale: int
) -> None:
    call = resolve(tool, config, api="open", output_format=fmt)
    assert call.api == "open" and call.open_tool == tool and call.open_config == config
    assert call.media == media and call.output_format == sent and call.scale == scale
    assert call.jconfig is None


def test_open_estimates_and_friendly_names() -> None:
    assert resolve("upscale", {"scale": 8}, api="open").estimate() == 2.0
    assert resolve("upscale", {"scale": 4}, api="open").estimate() == 1.0
    assert resolve("sharpen", {}, api="open").estimate() == 1.0
    for friendly, (_, open_tool) in FRIENDLY.items():
        if open_tool:
            config = {"prompt": "x"} if open_tool == "custom" else {}
            assert resolve(friendly, config, api="open").open_tool == open_tool
    assert set(OPEN_TOOLS) == {t for _, t in FRIENDLY.values() if t}


OPEN_INVALID: list[tuple[str, Any, str | None, type[InvalidInputError], str]] = [
    ("upscale", {"scale": 6}, None, InvalidConfigError, "scale=6 is not allowed"),
    ("upscale", {"scale": 3}, None, InvalidConfigError, "scale=3 is not allowed"),
    ("upscale", {"scale": "2"}, None, InvalidConfigError, "scale must be int"),
    ("upscale", {"face_enhance": "yes"}, None, InvalidConfigError, "face_enhance must be bool"),
    (
        "upscale",
        {"scale": 2, "suppress_noise": 40},
        None,
        InvalidConfigError,
        "unknown option 'suppress_noise'",
    ),
    ("sharpen", {"remove_blur": 0.5}, None, InvalidConfigError, "unknown option 'remove_blur'"),
    ("remove_bg", {"face_enhance": True}, None, InvalidConfigError, "unknown option 'face_enhance'"),
    ("passport_photo", {"size": "35x45"}, None, InvalidConfigError, "unknown option 'size'"),
    ("custom", {}, None, InvalidConfigError, "'prompt' is required"),
    ("custom", {"prompt": "   "}, None, InvalidConfigError, "prompt must not be empty"),
    ("custom", {"prompt": 5}, None, InvalidConfigError, "prompt must be str"),
    ("cartoonize", {"style": 5}, None, InvalidConfigError, "style must be str"),
    ("upscale", {}, "gif", InvalidConfigError, "output_format 'gif'"),
    ("upscale", {}, "bmp", InvalidConfigError, "output_format 'bmp'"),
    ("upscale", ["scale", 2], None, InvalidConfigError, "mapping"),
    ("video_upscale", {"scale": 8}, None, InvalidConfigError, "scale=8 is not allowed"),
    ("video_upscale", {"fps": 0}, None, InvalidConfigError, "fps=0 is out of range"),
    ("video_upscale", {"fps": 121}, None, InvalidConfigError, "fps=121 is out of range"),
    ("video_upscale", {"fps": "30"}, None, InvalidConfigError, "fps must be"),
    ("video_upscale", {"codec": "vp9"}, None, InvalidConfigError, "codec='vp9' is not allowed"),
    ("video_hdr", {"quality": "ultra"}, None, InvalidConfigError, "quality='ultra' is not allowed"),
    ("video_hdr", {"codec": "av1"}, None, InvalidConfigError, "codec='av1' is not allowed"),
    ("video_hdr", {"scale": 2}, None, InvalidConfigError, "unknown option 'scale'"),
    ("video_face_enhance", {"quality": 1}, None, InvalidConfigError, "quality must be str"),
    # unknown tools and tools that only the web API has
    ("warp_drive", {}, None, UnknownToolError, "'warp_drive' is unknown"),
    ("colorize", {}, None, UnknownToolError, "exists on the web API v1"),
    ("anime_upscale", {}, None, UnknownToolError, "exists on the web API v1"),
    ("face_enhance", {}, None, UnknownToolError, "exists on the web API v1"),
    ("enlarge3", {"scale": 2}, None, UnknownToolError, "exists on the web API v1"),
    ("img2sr", {}, None, UnknownToolError, "exists on the web API v1"),
    ("deoldify2", {}, None, UnknownToolError, "exists on the web API v1"),
    ("matting", {}, None, UnknownToolError, "exists on the web API v1"),
]


@pytest.mark.parametrize(
    ("tool", "config", "fmt", "error", "needle"),
    OPEN_INVALID,
    ids=[f"{t}-{i}" for i, (t, *_) in enumerate(OPEN_INVALID)],
)
def test_open_invalid_configs(
    tool: str, config: Any, fmt: str | None, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error) as info:
        resolve(tool, config, api="open", output_format=fmt)
    assert isinstance(info.value, InvalidInputError)
    assert needle in str(info.value)


@pytest.mark.parametrize("api", ["web", "open"])
def test_config_that_is_not_a_mapping(api: str) -> None:
    for bad in (["scale", 2], "scale=2", 4):
        with pytest.raises(InvalidConfigError, match="mapping"):
            resolve("upscale", bad, api=api)  # type: ignore[arg-type]


def test_unknown_tool_hint_lists_the_tools() -> None:
    with pytest.raises(UnknownToolError) as info:
        resolve("upscal", {}, api="open")
    assert info.value.hint and "upscale" in info.value.hint and "video_upscale" in info.value.hint
    with pytest.raises(UnknownToolError) as info:
        resolve("upscal", {}, api="web")
    assert info.value.hint and "enlarge3" in info.value.hint


def test_fingerprint_tracks_the_config() -> None:
    a = resolve("upscale", {"scale": 2}, api="open")
    assert a.fingerprint() == resolve("upscale", {"scale": 2}, api="open").fingerprint()
    assert a.fingerprint() != resolve("upscale", {"scale": 4}, api="open").fingerprint()
    assert a.fingerprint() != resolve("upscale", {"scale": 2}, api="open", output_format="png").fingerprint()
    assert a.fingerprint() != resolve("upscale", {"scale": 2}, api="web").fingerprint()
