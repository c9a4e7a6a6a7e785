"""Blocking twins of async methods, for ``VanceClient`` and ``VisionCraft``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

R = TypeVar("R")


P = ParamSpec("P")


def blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Any, P], R]:
    """The blocking twin of an async method, with its signature and docstring: it runs the
    method against ``self.aio`` on the owner's private loop (``self.run``)."""

    @functools.wraps(method)
    def twin(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.run(method(self.aio, *args, **kwargs))
        return result

    return twin
