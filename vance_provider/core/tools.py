"""The tool catalogue of both APIs, and config validation before anything is uploaded.

A *friendly* tool name (``upscale``, ``denoise``, ...) maps to the web API's
``jconfig`` module or to the Open API's tool, where the feature exists. Every web
module can also be named directly (``real_esrgan``, ``img2sr``, ...) with its
``module_params`` as config, and a raw ``jconfig`` (one step or a workflow) is
accepted as is, after the same checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .api.errors import ConfigurationError, InvalidConfigError, UnknownToolError
from .api.models import API_TITLES, ApiName, Media
from .vendors.capabilities import capabilities_of


@dataclass(frozen=True)
class Param:
    kind: type | tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    required: bool = False
    max_len: int | None = None

    def check(self, name: str, value: Any, where: str) -> None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        ok_type = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok_type:
            names = "/".join(k.__name__ for k in kinds)
            raise InvalidConfigError(
                f"{where}: {name} must be {names}, got {value!r}", hint=_choices_hint(self)
            )
        if self.choices is not None and value not in self.choices:
            raise InvalidConfigError(f"{where}: {name}={value!r} is not allowed", hint=_choices_hint(self))
        if self.lo is not None and self.hi is not None and not self.lo <= value <= self.hi:
            raise InvalidConfigError(f"{where}: {name}={value!r} is out of range", hint=_choices_hint(self))
        if self.max_len is not None and len(value) > self.max_len:
            raise InvalidConfigError(f"{where}: {name} is longer than {self.max_len} characters")


def _choices_hint(p: Param) -> str:
    if p.choices is not None:
        return "use one of " + ", ".join(repr(c) for c in p.choices)
    if p.lo is not None:
        return f"use a value from {p.lo} to {p.hi}"
    return ""


def P(kind: type | tuple[type, ...], **kw: Any) -> Param:
    return Param(kind, **kw)


NUM = (int, float)
PCT = P(int, lo=0, hi=100)
UNIT = P(NUM, lo=0, hi=1)
BOOL = P(bool)
STR = P(str)
OLD_STYLES = tuple(f"style{i}" for i in range(1, 7))
NEW_STYLES = (
    *OLD_STYLES,
    "us_comic_boy",
    "us_comic_girl",
    "disney_boy",
    "disney_girl",
    "Ghibli_boy",
    "Ghibli_girl",
)
CN_NAMES = (
    "cartoon_tile",
    "cartoon_lineart",
    "cartoon_normal",
    "cartoon_canny",
    "more_cartoon_lineart",
    "more_real_lineart",
    "cartoon_normal_noforge",
)

# --- the web API v1 modules (jconfig) --------------------------------------------------------
WEB_MODULES: dict[str, dict[str, Param]] = {
    "enlarge3": {
        "model_name": P(str, choices=("EnlargeStandard_2x_Stable", "EnlargeStandard_4x_Stable")),
        "scale": P(int, choices=(2, 4, 6, 8)),
        "suppress_noise": PCT,
        "remove_blur": PCT,
    },
    "enlarge": {
        "model_name": STR,
        "scale": P(str, choices=("2x", "4x", "6x", "8x")),
        "suppress_noise": PCT,
        "remove_blur": PCT,
    },
    "denoise": {
        "model_name": P(str, choices=("DenoiseStable",)),
        "auto_params": BOOL,
        "remove_noise": PCT,
        "sharpen": PCT,
    },
    "sharpen3": {
        "model_name": P(str, choices=("SharpenGeneralStable",)),
        "blur_type": P(int),
        "remove_blur": UNIT,
        "suppress_noise": UNIT,
        "remove_artifacts": UNIT,
        "autoparams": BOOL,
        "automodel": BOOL,
    },
    "matting": {"model_name": P(str, choices=("MattingStable",))},
    "chainner": {
        "model_name": P(str, choices=("Anime_4x_AnimeSharp",)),
        "scale": P(str, choices=("2x", "4x", "8x")),
    },
    "real_esrgan": {
        "model_name": P(str, choices=("RealEsrganStable",)),
        "scale": P(str, choices=("1x", "2x", "4x", "6x", "8x")),
    },
    "crease_repair": {"model_name": P(str, choices=("CreaseRepairStable",))},
    "img2sr": {
        "model_name": P(str, choices=("style_sr_512",)),
        "face_enhancer": BOOL,
        "strength": P(NUM, lo=0.8, hi=1.0),
    },
    "cartoonize": {"model_name": P(str, choices=("CartoonizeStable",))},
    "img2anime": {
        "model_name": P(str, choices=NEW_STYLES),
        "description": P(str, max_len=140),
        "control_mode": P(int, choices=(0, 1, 2)),
        "style_strength": P(int, lo=0, hi=12),
        "prompt": P(str, max_len=140),
        "overwrite": BOOL,
        "denoising_strength": UNIT,
        "cn_configs": P(list),
    },
    "animegan2": {"model_name": P(str, choices=("Animegan2Stable",)), "single_face": BOOL},
    "sd_recolor": {"model_name": P(str, choices=("sd_recolor",)), "prompt": STR, "negative_prompt": STR},
    "deoldify2": {"model_name": P(str, choices=("DeoldifyArtistic",)), "render_factor": P(int, lo=10, hi=70)},
    "CodeFormer": {"model_name": P(str, choices=("CodeFormerStable",))},
}
WEB_DEFAULT_MODEL = {
    "enlarge3": "EnlargeStandard_2x_Stable",
    "enlarge": "EnlargeStable",
    "denoise": "DenoiseStable",
    "sharpen3": "SharpenGeneralStable",
    "matting": "MattingStable",
    "chainner": "Anime_4x_AnimeSharp",
    "real_esrgan": "RealEsrganStable",
    "crease_repair": "CreaseRepairStable",
    "img2sr": "style_sr_512",
    "cartoonize": "CartoonizeStable",
    "img2anime": "style1",
    "animegan2": "Animegan2Stable",
    "sd_recolor": "sd_recolor",
    "deoldify2": "DeoldifyArtistic",
    "CodeFormer": "CodeFormerStable",
}
WEB_JOB_NAME = {
    "sharpen3": "va_sharpen_standard",
    "sd_recolor": "recolor",
    "deoldify2": "colorize",
    "animegan2": "animegan",
}
LAST_STEP_ONLY = {"enlarge3", "enlarge", "matting"}
WEB_SCALERS = {"enlarge3", "enlarge", "chainner", "real_esrgan"}

# --- the Open API v1 tools ---------------------------------------------------------------------
OPEN_TOOLS: dict[str, tuple[Media, dict[str, Param]]] = {
    "upscale": ("image", {"scale": P(int, choices=(2, 4, 8)), "face_enhance": BOOL}),
    "sharpen": ("image", {"face_enhance": BOOL}),
    "denoise": ("image", {"face_enhance": BOOL}),
    "remove_bg": ("image", {}),
    "restore": ("image", {"face_enhance": BOOL}),
    "cartoonize": ("image", {"style": STR, "face_enhance": BOOL}),
    "passport_photo": ("image", {}),
    "custom": ("image", {"prompt": P(str, required=True), "face_enhance": BOOL}),
    # quality/codec "have no effect" on video_upscale, but the document's own example sends codec
    "video_upscale": (
        "video",
        {
            "scale": P(int, choices=(2, 4)),
            "fps": P(NUM, lo=1, hi=120),
            "quality": P(str, choices=("high", "medium", "low")),
            "codec": P(str, choices=("h264", "h265")),
            "source_width": P(int),
            "source_height": P(int),
            "duration": P(NUM),
        },
    ),
    "video_hdr": (
        "video",
        {
            "quality": P(str, choices=("high", "medium", "low")),
            "codec": P(str, choices=("h264", "h265")),
            "hdr_color_gamut": STR,
            "source_width": P(int),
            "source_height": P(int),
            "duration": P(NUM),
        },
    ),
    "video_face_enhance": (
        "video",
        {
            "face_enhanced_mode": STR,
            "quality": P(str, choices=("high", "medium", "low")),
            "codec": P(str, choices=("h264", "h265")),
            "source_width": P(int),
            "source_height": P(int),
            "duration": P(NUM),
        },
    ),
}
OPEN_FORMATS = ("jpg", "png", "webp")
# Credits per second of video (video_upscale: per second and per unit of scale). The vendor's
# documents publish no price list, only that the charge follows the measured duration and
# resolution: these are the simulator's rates, used for the pre-flight estimate; the service's
# ``credits_estimated`` (sent the duration and size) replaces them once a job exists.
VIDEO_CREDITS_PER_SECOND = {"video_upscale": 0.5, "video_hdr": 0.5, "video_face_enhance": 0.8}
UNKNOWN_VIDEO_SECONDS = 60.0

# --- VisionCraft (api="visioncraft"): the image tools a batch can run over a dataset ---------
# Scheduler and refiner names are checked against the lists the API serves (the backend's
# ``check_call``), since they change on the service side.
VISIONCRAFT_TOOLS: dict[str, tuple[Media, dict[str, Param]]] = {
    "upscale": ("image", {}),
    "img2img": (
        "image",
        {
            "prompt": P(str, required=True, max_len=2000),
            "negative_prompt": P(str, max_len=2000),
            "scheduler": STR,
            "steps": P(int, lo=1, hi=50),
            "strength": UNIT,
            "refiner": STR,
        },
    ),
}

# --- friendly names -> (web module, Open API tool); None where an API lacks the feature --------
FRIENDLY: dict[str, tuple[str | None, str | None]] = {
    "upscale": ("enlarge3", "upscale"),
    "denoise": ("denoise", "denoise"),
    "sharpen": ("sharpen3", "sharpen"),
    "remove_bg": ("matting", "remove_bg"),
    "restore": ("crease_repair", "restore"),
    "cartoonize": ("img2anime", "cartoonize"),
    "colorize": ("deoldify2", None),
    "anime_upscale": ("real_esrgan", None),
    "face_enhance": ("CodeFormer", None),
    "passport_photo": (None, "passport_photo"),
    "custom": (None, "custom"),
    "video_upscale": (None, "video_upscale"),
    "video_hdr": (None, "video_hdr"),
    "video_face_enhance": (None, "video_face_enhance"),
}

#: Our tool names on the APIs that name them otherwise: ours -> the API's (None where it lacks one).
VENDOR_NAMES: dict[str, dict[str, str | None]] = {
    "web": {ours: web for ours, (web, _) in FRIENDLY.items()},
    "open": {ours: open_ for ours, (_, open_) in FRIENDLY.items()},
}
#: The APIs whose own tool names are a closed list: another name there is not one tool (a web
#: API workflow's name, say).
OWN_TOOLS: dict[str, Collection[str]] = {"web": WEB_MODULES.keys()}


@dataclass(frozen=True)
class ToolCall:
    """A validated request for one API: what to send and what to expect back."""

    api: ApiName
    tool: str  # the name the user gave
    media: Media
    jconfig: dict[str, Any] | None = None  # web API
    open_tool: str | None = None  # Open API
    open_config: dict[str, Any] | None = None
    output_format: str | None = None
    scale: int = 1  # how much the output's sides grow (for checks)

    @property
    def vendor_tool(self) -> str:
        return self.open_tool or str((self.jconfig or {}).get("name"))

    def estimate(self, duration: float | None = None) -> float:
        """Credits one job is expected to cost (web: charged on first download).

        A video's cost grows with its ``duration`` (seconds, from the file's header); without one,
        a video is assumed to be :data:`UNKNOWN_VIDEO_SECONDS` long, so a budget errs on the safe side.
        The service's own estimate replaces this one as soon as a job is created.
        """
        if not capabilities_of(self.api).charges_credits:
            return 0.0  # a subscription, not credits: nothing is counted per job
        if self.jconfig is not None:  # a web API module or workflow
            steps = _steps(self.jconfig)
            return 2.0 if any(s.get("module") == "sharpen3" for s in steps) else 1.0
        config = self.open_config or {}
        if self.media == "image":
            return 2.0 if self.open_tool == "upscale" and config.get("scale") == 8 else 1.0
        rate = VIDEO_CREDITS_PER_SECOND.get(str(self.open_tool), max(VIDEO_CREDITS_PER_SECOND.values()))
        if self.open_tool == "video_upscale":
            rate *= int(config.get("scale", 2))
        seconds = duration if duration is not None and duration > 0 else UNKNOWN_VIDEO_SECONDS
        return max(1.0, round(rate * seconds, 1))

    def fingerprint(self) -> str:
        return json.dumps(
            [self.api, self.jconfig, self.open_tool, self.open_config, self.output_format], sort_keys=True
        )


def media_of(tool: str) -> Media:
    """Image or video, from one of our tool names or an Open API tool name (web tools are images)."""
    open_tool = FRIENDLY[tool][1] if tool in FRIENDLY else tool
    return OPEN_TOOLS[open_tool][0] if open_tool in OPEN_TOOLS else "image"


def _steps(jconfig: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = jconfig.get("config")
    if isinstance(cfg, list):
        return [s.get("config", {}) if isinstance(s, dict) else {} for s in cfg]
    return [cfg] if isinstance(cfg, dict) else []


def _check_params(params: dict[str, Any], schema: dict[str, Param], where: str) -> None:
    if not isinstance(params, dict):
        raise InvalidConfigError(f"{where}: the config must be a mapping, got {type(params).__name__}")
    for key in params:
        if key not in schema:
            raise InvalidConfigError(
                f"{where}: unknown option {key!r}",
                hint="known options: " + (", ".join(sorted(schema)) or "none"),
            )
    for key, param in schema.items():
        if key in params:
            param.check(key, params[key], where)
        elif param.required:
            raise InvalidConfigError(f"{where}: option {key!r} is required")


def _check_web_step(step: dict[str, Any], where: str) -> None:
    module = step.get("module")
    if module not in WEB_MODULES:
        raise UnknownToolError(
            f"{where}: unknown web API module {module!r}",
            hint="known modules: " + ", ".join(sorted(WEB_MODULES)),
        )
    params = step.get("module_params") or {}
    _check_params(params, WEB_MODULES[module], f"{where} ({module})")
    if module == "enlarge3":
        model, scale = params.get("model_name", WEB_DEFAULT_MODEL["enlarge3"]), params.get("scale")
        if scale is None:
            raise InvalidConfigError(
                f"{where} (enlarge3): scale is required",
                hint="use 2 with a _2x_ model, or 4, 6 or 8 with a _4x_ model",
            )
        if ("_2x_" in model and scale != 2) or ("_4x_" in model and scale not in (4, 6, 8)):
            raise InvalidConfigError(
                f"{where} (enlarge3): scale {scale} does not fit model {model}",
                hint="a _2x_ model takes scale 2; a _4x_ model takes 4, 6 or 8",
            )
    if module == "img2anime":
        _check_cn_configs(params.get("cn_configs") or [], f"{where} (img2anime)")
    out = step.get("out_params")
    if out is not None:
        _check_out_params(out, where)


def _check_cn_configs(cn_configs: Any, where: str) -> None:
    if not isinstance(cn_configs, list):
        raise InvalidConfigError(f"{where}: cn_configs must be list, got {cn_configs!r}")
    for cn in cn_configs:
        if not isinstance(cn, dict) or cn.get("cn_name") not in CN_NAMES or not cn.get("image_uid"):
            raise InvalidConfigError(
                f"{where}: each cn_configs entry needs image_uid and a cn_name from {', '.join(CN_NAMES)}"
            )


def _check_out_params(out: Any, where: str) -> None:
    if not isinstance(out, dict):
        raise InvalidConfigError(f"{where}: out_params must be a mapping")
    for key, value in out.items():
        if key in ("compress", "bg_composed") and not isinstance(value, dict):
            raise InvalidConfigError(f"{where}: out_params {key} must be a mapping, got {value!r}")
        if key == "compress":
            P(int, lo=0, hi=100).check("compress.quality", value.get("quality", 90), where)
        elif key == "dpi":
            P(int, lo=0, hi=2000).check("dpi", value, where)
        elif key == "format":
            P(str, choices=("jpg", "png")).check("format", value, where)
        elif key == "bg_composed":
            color = value.get("bg_color") or {}
            if not isinstance(color, dict):
                raise InvalidConfigError(f"{where}: out_params bg_composed.bg_color must be a mapping")
            for c in "rgb":
                P(int, lo=0, hi=255).check(f"bg_color.{c}", color.get(c), where)
        else:
            raise InvalidConfigError(
                f"{where}: unknown out_params key {key!r}", hint="use compress, dpi, format or bg_composed"
            )


def validate_jconfig(jconfig: dict[str, Any] | str) -> dict[str, Any]:
    """Check a raw web API jconfig (one step or a workflow) and return it parsed."""
    if isinstance(jconfig, str):
        try:
            jconfig = json.loads(jconfig)
        except ValueError as exc:
            raise InvalidConfigError(f"jconfig is not valid JSON: {exc}") from None
    if not isinstance(jconfig, dict) or not isinstance(jconfig.get("config"), (dict, list)):
        raise InvalidConfigError(
            "jconfig needs a 'config' that is one step or a list of steps",
            hint='{"name": ..., "config": {"module": ..., "module_params": {...}}}',
        )
    raw_steps = jconfig["config"]
    if isinstance(raw_steps, dict):
        steps = [raw_steps]
    else:
        if not raw_steps:
            raise InvalidConfigError("jconfig workflow has no steps")
        steps = []
        for i, s in enumerate(raw_steps):
            if not isinstance(s, dict) or not isinstance(s.get("config"), dict):
                raise InvalidConfigError(f"jconfig step {i + 1} needs a 'config' mapping")
            steps.append(s["config"])
    for i, step in enumerate(steps):
        where = f"jconfig step {i + 1}"
        _check_web_step(step, where)
        last = i == len(steps) - 1
        if step["module"] in LAST_STEP_ONLY and not last:
            raise InvalidConfigError(
                f"{where}: {step['module']} must be the last step of a workflow",
                hint="enlarge and background removal can only be the last step",
            )
        if step.get("out_params") and not last:
            raise InvalidConfigError(f"{where}: out_params belong on the last step")
    if "cn_configs" in jconfig:  # the newer img2anime document shows cn_configs beside "config"
        _check_cn_configs(jconfig["cn_configs"], "jconfig")
    return jconfig


def web_scale(jconfig: dict[str, Any]) -> int:
    scale = 1
    for step in _steps(jconfig):
        if step.get("module") in WEB_SCALERS:
            raw = (step.get("module_params") or {}).get("scale", 2)
            scale *= int(str(raw).lower().rstrip("x"))
    return scale


def _web_step(module: str, config: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in config.items() if k != "out_params"}
    params.setdefault("model_name", WEB_DEFAULT_MODEL[module])
    if module == "enlarge3":
        params.setdefault("scale", 2)
        if "model_name" not in config:
            params["model_name"] = (
                "EnlargeStandard_2x_Stable" if params["scale"] == 2 else "EnlargeStandard_4x_Stable"
            )
    step: dict[str, Any] = {"module": module, "module_params": params}
    if config.get("out_params"):
        step["out_params"] = config["out_params"]
    return step


def resolve(
    tool: str,
    config: dict[str, Any] | None = None,
    *,
    api: ApiName,
    output_format: str | None = None,
    jconfig: dict[str, Any] | str | None = None,
) -> ToolCall:
    """Turn a tool name and config into a validated call for ``api`` (raises before any upload)."""
    if config is not None and not isinstance(config, dict):
        raise InvalidConfigError(f"{tool}: the config must be a mapping, got {type(config).__name__}")
    if api not in RESOLVERS:
        raise ConfigurationError(f"unknown API {api!r}", hint="use one of " + ", ".join(RESOLVERS))
    return RESOLVERS[api](tool, dict(config or {}), output_format, jconfig)


def _resolve_web(
    tool: str, config: dict[str, Any], output_format: str | None, jconfig: dict[str, Any] | str | None
) -> ToolCall:
    if jconfig is not None:
        parsed = validate_jconfig(jconfig)
        return ToolCall(
            "web",
            tool or str(parsed.get("name")),
            "image",
            jconfig=parsed,
            scale=web_scale(parsed),
            output_format=_web_format(parsed),
        )
    module = FRIENDLY[tool][0] if tool in FRIENDLY else tool if tool in WEB_MODULES else None
    if module is None:
        known = sorted({t for t, (w, _) in FRIENDLY.items() if w} | set(WEB_MODULES))
        raise _unknown_tool(tool, "web", "open", tool in FRIENDLY or tool in OPEN_TOOLS, "web API", known)
    if tool == "upscale" and "scale" in config and config["scale"] not in (2, 4, 6, 8):
        raise InvalidConfigError(
            f"upscale: scale={config['scale']!r} is not allowed on the web API", hint="use 2, 4, 6 or 8"
        )
    if output_format:
        config.setdefault("out_params", {})["format"] = "jpg" if output_format == "jpeg" else output_format
    built = {"name": WEB_JOB_NAME.get(module, module), "config": _web_step(module, config)}
    parsed = validate_jconfig(built)
    return ToolCall(
        "web", tool, "image", jconfig=parsed, scale=web_scale(parsed), output_format=_web_format(parsed)
    )


def _unknown_tool(
    tool: str, api: str, other: str, on_other: bool, label: str, known: list[str]
) -> UnknownToolError:
    """A tool ``api`` lacks: where it exists instead (``other``, if ``on_other``), and the tools
    ``api`` (``label`` in the hint) has."""
    where = f"is not on the {API_TITLES[api]}; it exists on the {API_TITLES[other]} (api={other!r})"
    return UnknownToolError(
        f"tool {tool!r} {where if on_other else 'is unknown'}", hint=f"{label} tools: " + ", ".join(known)
    )


def _no_jconfig(jconfig: dict[str, Any] | str | None) -> None:
    if jconfig is not None:
        raise InvalidConfigError(
            "jconfig is for the web API v1 only", hint="use tool= and config= on the Open API"
        )


def _resolve_open(
    tool: str, config: dict[str, Any], output_format: str | None, jconfig: dict[str, Any] | str | None
) -> ToolCall:
    _no_jconfig(jconfig)
    open_tool = FRIENDLY[tool][1] if tool in FRIENDLY else tool if tool in OPEN_TOOLS else None
    if open_tool is None:
        on_web = tool in FRIENDLY or tool in WEB_MODULES
        raise _unknown_tool(tool, "open", "web", on_web, "Open API", sorted(OPEN_TOOLS))
    media, schema = OPEN_TOOLS[open_tool]
    _check_params(config, schema, open_tool)
    if open_tool == "custom" and not str(config.get("prompt", "")).strip():
        raise InvalidConfigError("custom: prompt must not be empty")
    fmt = output_format
    if media == "image":
        fmt = "jpg" if fmt in (None, "jpeg") else fmt
        if fmt not in OPEN_FORMATS:
            raise InvalidConfigError(
                f"output_format {output_format!r} is not allowed", hint="use jpg, png or webp"
            )
    scale = int(config.get("scale", 2)) if open_tool in ("upscale", "video_upscale") else 1
    return ToolCall(
        "open",
        tool,
        media,
        open_tool=open_tool,
        open_config=config,
        output_format=fmt if media == "image" else "mp4",
        scale=scale,
    )


def _resolve_visioncraft(
    tool: str, config: dict[str, Any], output_format: str | None, jconfig: dict[str, Any] | str | None
) -> ToolCall:
    _no_jconfig(jconfig)
    if tool not in VISIONCRAFT_TOOLS:
        raise UnknownToolError(
            f"tool {tool!r} is not a VisionCraft batch tool",
            hint="VisionCraft batch tools: "
            + ", ".join(sorted(VISIONCRAFT_TOOLS))
            + "; generate, generate_xl, text_to_gif and image_to_video are client methods",
        )
    media, schema = VISIONCRAFT_TOOLS[tool]
    _check_params(config, schema, f"visioncraft {tool}")
    if tool == "img2img" and not str(config.get("prompt", "")).strip():
        raise InvalidConfigError("visioncraft img2img: prompt must not be empty")
    if output_format not in (None, "png"):
        raise InvalidConfigError(
            f"output_format {output_format!r} is not available on VisionCraft",
            hint="VisionCraft returns PNG; leave output_format unset",
        )
    return ToolCall(
        "visioncraft",
        tool,
        media,
        open_tool=tool,
        open_config=config,
        output_format=output_format,
        scale=1,  # the service picks the upscale factor
    )


#: Each API's catalogue: its tool names and options, checked before anything is uploaded.
RESOLVERS: dict[str, Callable[[str, dict[str, Any], str | None, dict[str, Any] | str | None], ToolCall]] = {
    "web": _resolve_web,
    "open": _resolve_open,
    "visioncraft": _resolve_visioncraft,
}


def _web_format(jconfig: dict[str, Any]) -> str | None:
    steps = _steps(jconfig)
    out = (steps[-1].get("out_params") or {}) if steps else {}
    return out.get("format")
