"""Streaming a batch's inputs into its jobs: the first inputs are checked and submitted while the
rest are still being checked.

Planning up front is only what needs the whole batch and is cheap: the listing, the output names,
the overwrite and collision refusals, and the budget and balance check (an estimate per item from
the tool's price). A new input's manifest item is made when the stream reaches it (the rest once
the first job is created). Checking an input (reading its header, decoding it for its pixels,
hashing it) is per item: done here, a chunk at a time, each item before it is staged, so a bad
input still fails alone before anything is paid for it. The first chunks are small (the first
job waits for one of them only), later ones :data:`~.planning.CHECK_CHUNK`; checking runs at most
``ahead`` items in front of the items whose runs have ended, so memory stays bounded whatever the
batch's size.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable

from ..state.manifest import ManifestItem
from .planning import CHECK_CHUNK

FIRST_CHUNK = 4  # inputs checked before the first job; each next chunk doubles, to CHECK_CHUNK


async def stream_work(
    work: list[ManifestItem],
    unchecked: set[str],
    new: Iterable[ManifestItem],
    check: Callable[[list[ManifestItem]], Awaitable[list[ManifestItem]]],
    start: Callable[[ManifestItem], asyncio.Task[None]],
    stopped: Callable[[], bool],
    skip: Callable[[ManifestItem], None],
    ahead: int,
) -> None:
    """Start every item of ``work``: those not in ``unchecked`` (jobs resumed from the manifest,
    inputs already checked) at once; the others, then those of ``new`` (taken one chunk at a
    time: new inputs' items are made as they are reached), once ``check`` has passed them (it
    returns those still to submit: a bad input, or one served from the result cache, is not).
    Once ``stopped()`` (a budget reached, the credits gone), the rest are handed to ``skip``
    unchecked."""
    later = []
    for item in work:
        if item.source in unchecked:
            later.append(item)
        else:
            start(item)
    rest = itertools.chain(later, new)
    room = asyncio.Semaphore(max(ahead, CHECK_CHUNK))
    size = FIRST_CHUNK
    while chunk := list(itertools.islice(rest, size)):
        if stopped():
            for item in itertools.chain(chunk, rest):
                skip(item)
            return
        size = min(size * 2, CHECK_CHUNK)
        for _ in chunk:  # room for the whole chunk before it is checked
            await room.acquire()
        ready = await check(chunk)
        for _ in range(len(chunk) - len(ready)):
            room.release()
        for item in ready:
            start(item).add_done_callback(lambda _task: room.release())
