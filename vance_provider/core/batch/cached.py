"""The result cache seen from a batch: serve what it holds (0 credits), keep what was paid for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..state.cache import ResultCache, key_for_call
from ..state.manifest import ItemState, ManifestItem
from ..tools import ToolCall

log = logging.getLogger("vance_provider.batch")


async def serve_from_cache(
    cache: ResultCache,
    call: ToolCall,
    work: list[ManifestItem],
    storage_options: dict[str, Any] | None,
    concurrency: int,
    check: Callable[[ManifestItem], None],
) -> tuple[list[ManifestItem], list[float]]:
    """Copy what the cache already holds to its items' outputs and mark them done. Returns the
    items still to do and the credits each served item saved. ``check`` guards each output before
    anything is written."""
    gate = asyncio.Semaphore(concurrency)

    async def serve(item: ManifestItem) -> float | None:
        if item.state != ItemState.PENDING or not item.input_sha256:
            return None
        check(item)
        key = key_for_call(item.input_sha256, call)
        async with gate:
            try:
                hit = await asyncio.to_thread(cache.fetch, key, item.output or "", storage_options)
            except Exception as exc:  # a cache that cannot be read is a miss, never a failure
                log.warning("result cache lookup for %s failed, paying instead: %s", item.source, exc)
                return None
        if hit is None:
            return None
        item.settle(ItemState.DONE, output=hit.output, credits=0.0, cached=True, saved=hit.credits_saved)
        return hit.credits_saved

    served = await asyncio.gather(*(serve(i) for i in work))
    saved = [s for s in served if s is not None]
    if saved:
        log.info("served %d of %d item(s) from the result cache", len(saved), len(work))
    return [i for i, s in zip(work, served, strict=True) if s is None], saved


async def store_in_cache(
    cache: ResultCache,
    call: ToolCall,
    item: ManifestItem,
    job_id: str,
    output: str,
    cost: float,
    storage_options: dict[str, Any] | None,
    input_size: int | None,
) -> None:
    """Keep a stored, verified result in the cache; a failure here never fails the item."""
    if not item.input_sha256:
        return
    try:
        await asyncio.to_thread(
            cache.store,
            key_for_call(item.input_sha256, call),
            output,
            job_id=job_id,
            credits=cost,
            storage_options=storage_options,
            input_size=input_size,
        )
    except Exception as exc:
        log.warning("could not keep %s in the result cache: %s", output, exc)
