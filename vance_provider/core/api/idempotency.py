"""The idempotency key a job submission carries: stable across retries and reruns."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tools import ToolCall


def default_idempotency_key(
    url: str, fingerprint: str, call: ToolCall, generation: int = 0, scope: str = ""
) -> str:
    """Stable for one logical submission (same input, content, tool, config, and batch ``scope``),
    across retries and reruns."""
    raw = f"{url}|{fingerprint}|{call.fingerprint()}|{generation}|{scope}"
    return "vp-" + hashlib.sha256(raw.encode()).hexdigest()[:40]
