"""VisionCraft's own calls (image generation, GIFs, image to video, LLM chat), off the general client.

They exist only on VisionCraft, so they live on a sub-client: ``client.visioncraft`` (async) or
``VanceClient(...).visioncraft`` (blocking). Asking for it on another API raises at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ...api.errors import InvalidConfigError, InvalidInputError
from ...blocking import blocking
from ...inputs import check_input
from ...state.storage import list_sources
from .backend import VisionCraftBackend

if TYPE_CHECKING:
    from ...api.models import Job
    from ..base import Backend


def visioncraft_backend(backend: Backend) -> VisionCraftBackend:
    if not isinstance(backend, VisionCraftBackend):
        raise InvalidConfigError(
            f"the VisionCraft calls need a VisionCraft client, this one speaks the {backend.api!r} API",
            hint="create the client with api='visioncraft'",
        )
    return backend


class AsyncVisionCraft:
    """VisionCraft-only operations of an :class:`~vance_provider.core.client.AsyncVanceClient`."""

    def __init__(self, backend: Backend) -> None:
        self._vc = visioncraft_backend(backend)

    def __repr__(self) -> str:
        return f"AsyncVisionCraft(base_url={self._vc.base_url!r})"

    async def options(self, kind: str, *, refresh: bool = False) -> list[str]:
        """An option list: models, samplers, loras, models_xl, samplers_xl, schedulers_xl,
        img2img_schedulers, img2img_refiners, models_llm, models_llm_premium (fetched once)."""
        return await self._vc.list_options(kind, refresh=refresh)

    async def generate(
        self, prompt: str, dest: str, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> tuple[Job, list[str]]:
        """Stable Diffusion 1.x: ``model``, ``sampler``, ``image_count`` (1-5), ``negative_prompt``,
        ``cfg_scale``, ``steps``, ``loras``. Writes the n-th image to ``<dest stem>_<n>``;
        returns the job and every output URL."""
        job = await self._vc.generate(prompt, **options)
        return job, await self._vc.download_all(job, dest, storage_options)

    async def generate_xl(
        self, prompt: str, dest: str, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> tuple[Job, str]:
        """Stable Diffusion XL: ``model``, ``sampler``, ``scheduler``, ``width``, ``height``,
        ``negative_prompt``, ``refiner``."""
        job = await self._vc.generate_xl(prompt, **options)
        return job, await self._vc.download(job, dest, storage_options)

    async def text_to_gif(
        self, prompt: str, dest: str, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> tuple[Job, str]:
        """Text to GIF: ``sampler``, ``negative_prompt``, ``cfg_scale``, ``steps``."""
        job = await self._vc.text_to_gif(prompt, **options)
        return job, await self._vc.download(job, dest, storage_options)

    async def image_to_video(
        self, source: str, dest: str, *, storage_options: dict[str, Any] | None = None
    ) -> tuple[Job, str]:
        """Image to video (subscribers): an MP4 from one image."""
        so = self._vc.options(storage_options)
        sources = await asyncio.to_thread(list_sources, source, None, so)
        if len(sources) != 1:
            raise InvalidInputError("image_to_video takes exactly one image", source=str(source))
        await asyncio.to_thread(check_input, sources[0].url, sources[0].size, "image", self._vc.api, so)
        job = await self._vc.image_to_video(sources[0].url, storage_options)
        return job, await self._vc.download(job, dest, storage_options)

    async def llm(self, model: str, messages: list[dict[str, str]]) -> Any:
        """The free LLM chat; the service's answer as is."""
        return await self._vc.llm(model, messages)

    async def premium_llm(self, model: str, message: str, chat_id: str | None = None) -> Any:
        """The premium LLM chat (subscribers); the answer carries a ``chat_id``."""
        return await self._vc.premium_llm(model, message, chat_id)


class VisionCraft:
    """The blocking twin of :class:`AsyncVisionCraft` (``VanceClient(...).visioncraft``)."""

    def __init__(self, aio: AsyncVisionCraft, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self.aio = aio
        self.run = run  # the owning VanceClient's loop

    def __repr__(self) -> str:
        return repr(self.aio).removeprefix("Async")

    options = blocking(AsyncVisionCraft.options)
    generate = blocking(AsyncVisionCraft.generate)
    generate_xl = blocking(AsyncVisionCraft.generate_xl)
    text_to_gif = blocking(AsyncVisionCraft.text_to_gif)
    image_to_video = blocking(AsyncVisionCraft.image_to_video)
    llm = blocking(AsyncVisionCraft.llm)
    premium_llm = blocking(AsyncVisionCraft.premium_llm)
