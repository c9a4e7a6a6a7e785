"""What every VanceAI operator shares: the connections it reads and the hook it builds from them."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from vance_provider._common import VanceAITaskMixin, ends_at
from vance_provider.airflow_compat import BaseOperator
from vance_provider.hooks.storage import storage_options_from_connection
from vance_provider.hooks.vanceai import VanceAIHook


class VanceAIBaseOperator(VanceAITaskMixin, BaseOperator):
    """The VanceAI connection, the storage's options or connection, and the hook made of them."""

    def __init__(
        self,
        *,
        vanceai_conn_id: str = VanceAIHook.default_conn_name,
        storage_options: dict[str, Any] | None = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vanceai_conn_id = vanceai_conn_id
        self.storage_options = storage_options
        self.storage_conn_id = storage_conn_id

    def resolved_storage_options(self) -> dict[str, Any] | None:
        """``storage_options`` merged over the options built from ``storage_conn_id`` (if any)."""
        from_conn = storage_options_from_connection(self.storage_conn_id or None)
        if from_conn is None and self.storage_options is None:
            return None
        return {**(from_conn or {}), **(self.storage_options or {})}

    @cached_property
    def hook(self) -> VanceAIHook:
        return VanceAIHook(
            self.vanceai_conn_id,
            storage_options=self.resolved_storage_options(),
            caller=f"airflow/{self.task_type}",
        )


def deadline(op: BaseOperator, timeout: Any, started: float) -> tuple[float | None, str | None]:
    """The wait's deadline: the operator's ``timeout`` or the task's ``execution_timeout``, whichever
    comes first (Airflow does not count deferred time against ``execution_timeout``: we do), and
    which one it is."""
    own = ends_at(timeout, started)
    execution = ends_at(op.execution_timeout, started)
    if execution is not None and (own is None or execution <= own):
        return execution, "execution_timeout"
    return own, None if own is None else "timeout"
