"""``VanceAIShardOperator``: list a flat source once and split it into shard files for ``.expand()``.

The shard files live under the destination (``<destination>/_vance_shards/<plan-id>/``); the XCom
is only their URLs. Map :class:`~vance_provider.operators.batch.VanceAIEnhanceOperator` over them
with ``shard_file``::

    shards = VanceAIShardOperator(task_id="plan", source="s3://in/", destination="s3://out/", shards=8)
    VanceAIEnhanceOperator.partial(task_id="enhance", tool="upscale", pool="vanceai", pool_slots=4,
                                   max_concurrency=4).expand(shard_file=shards.output)

The core is imported when the task runs: a DAG file that uses the operator parses without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vance_provider._common import vance_errors
from vance_provider.airflow_compat import AirflowFailException
from vance_provider.object_storage import adopt_object_storage
from vance_provider.operators._base import VanceAIBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def shard_count(value: Any) -> int:
    """The number of shards, given as a number or rendered from a template (``"8"``)."""
    try:
        n = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        raise AirflowFailException(f"shards must be a whole number, got {value!r}") from None
    if n < 1:
        raise AirflowFailException(f"shards must be 1 or more, got {n}")
    return n


class VanceAIShardOperator(VanceAIBaseOperator):
    """List ``source`` once and split it into ``shards`` shard files; return their URLs.

    Each shard file (JSON: the inputs' URLs, sizes and fingerprints from the one listing, the
    destination, the shard's own manifest) is written atomically under
    ``<destination>/_vance_shards/<plan-id>/``. The plan id is the DAG run's (``plan_id`` to
    change it): a retried or cleared planning task hands out the same shards without listing
    again, so the mapped tasks of a run always see one split. No storage option or credential is
    written. Spends no credits and needs no VanceAI connection.

    :param source: a prefix, a glob or a list of URLs (fsspec); meant to be flat: outputs are
        named by the files' names.
    :param destination: where the outputs go (the same for every shard; each shard keeps its own
        manifest and lease there).
    :param shards: how many shards (templated; a number or ``"{{ params.shards }}"``).
    :param by: ``hash`` (default): an input's shard depends on its name only, so runs on a
        schedule keep each input in the shard that knows it (keep ``shards`` the same); ``count``:
        contiguous, balanced runs of the sorted listing, for a plan run once to its end.
    :param plan_id: the plan's name (default: the DAG id and run id).
    :param skip_empty: leave out empty shards (default: True; fewer mapped tasks).
    :param storage_conn_id: a connection with the store's credentials (as for the batch).
    """

    template_fields: Sequence[str] = ("source", "destination", "shards", "by", "plan_id", "storage_conn_id")

    def __init__(
        self,
        *,
        source: str | list[str],
        destination: str,
        shards: int | str,
        by: str = "hash",
        plan_id: str | None = None,
        skip_empty: bool = True,
        **kwargs: Any,
    ) -> None:
        if by not in ("hash", "count") and "{{" not in str(by):
            raise ValueError(f"by must be 'hash' or 'count', got {by!r}")
        source, destination = adopt_object_storage(kwargs, source, destination)
        super().__init__(**kwargs)
        self.source, self.destination, self.shards = source, destination, shards
        self.by, self.plan_id, self.skip_empty = by, plan_id, skip_empty

    def execute(self, context: Context) -> list[str]:
        from vance_provider.core.batch.shards import plan_shards

        if self.by not in ("hash", "count"):
            raise AirflowFailException(f"by must be 'hash' or 'count', got {self.by!r}")
        n = shard_count(self.shards)
        plan_id = self.plan_id
        if not plan_id:
            ti = context["ti"]
            plan_id = f"{ti.dag_id}__{ti.run_id}"
        with vance_errors():
            urls = plan_shards(
                self.source,
                self.destination,
                n,
                self.by,  # type: ignore[arg-type]
                self.hook.storage_options,
                plan_id=plan_id,
                skip_empty=self.skip_empty,
            )
        self.log.info(
            "VanceAI shards: %s split into %d shard file(s) (%s, plan %s)",
            self.source,
            len(urls),
            self.by,
            plan_id,
        )
        return urls
