"""Synchronous Airflow calls made from a trigger: in a worker thread, and always to their end.

In a triggerer, ``get_connection``, ``extra_dejson`` (which masks secrets) and the task-state
look-up talk to the triggerer's supervisor over one request/answer channel, synchronously: made
on the event loop they raise (Airflow 3.0: "You cannot use AsyncToSync in the same thread as an
async event loop"), so they run in a worker thread (``sync_to_async``). A trigger can be
cancelled more than once while such a call is under way (the triggerer repeats the cancel on
every loop until the trigger ends); ``sync_to_async`` then cuts the call off between request and
answer, the answer stays unread, the next caller reads it instead, and the triggerer stops
("Response read out of order"), taking every trigger with it. So the call is shielded: it runs to
its end, and the cancel is raised after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def to_the_end(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile; then re-raise the cancel."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def call_in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` in a worker thread, off the event loop, run to its end."""
    from asgiref.sync import sync_to_async

    return await to_the_end(sync_to_async(func)(*args, **kwargs))
