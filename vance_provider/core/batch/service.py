"""What the batch engine needs of a client: the calls it makes to the service. The client
(:class:`~vance_provider.core.client.AsyncVanceClient`) has them; the engine depends on this
description only, so the client can offer ``run_batch`` without an import circle."""

from __future__ import annotations

from typing import Any, Protocol

from ..api.models import ApiName, Balance, Capabilities, Job
from ..tools import ToolCall
from ..vendors.base import Backend


class BatchClient(Protocol):
    @property
    def api(self) -> ApiName: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def request_counts(self) -> dict[str, int]: ...

    backend: Backend

    def tool_call(
        self,
        tool: str,
        config: dict[str, Any] | None = None,
        *,
        output_format: str | None = None,
        jconfig: dict[str, Any] | str | None = None,
    ) -> ToolCall: ...

    async def check_call(self, call: ToolCall) -> None: ...

    async def balance(self) -> Balance: ...

    async def stage(
        self, source: str, size: int, call: ToolCall, *, storage_options: dict[str, Any] | None = None
    ) -> str | None: ...

    async def submit_checked(
        self,
        source: str,
        size: int,
        call: ToolCall,
        *,
        idempotency_key: str | None = None,
        storage_options: dict[str, Any] | None = None,
        staged: str | None = None,
    ) -> Job: ...

    async def get_job(self, job_id: str) -> Job: ...

    async def download(
        self, job: Job | str, dest: str, *, storage_options: dict[str, Any] | None = None
    ) -> str: ...

    async def cancel(self, job_id: str) -> Job: ...
