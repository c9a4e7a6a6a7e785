"""A dataset split into N shards, one static partition each (``partitions=shard_partitions(8)``).

Each partition's run reads its share from a shard file that one listing wrote under the
destination (:mod:`vance_provider.core.batch.shards`): the partitions of one backfill share one
plan (the first run lists the source and writes it; the others read it). Shards are by a stable
hash of the file's name, so a partition keeps its files as the source grows: re-materializing it
processes only its new files. Each shard has its own manifest and lease in the shared destination.
"""

from __future__ import annotations

import re
from typing import Any

import dagster as dg

from vance_provider.core.batch.shards import Shard, plan_shards, read_shard

_KEY = re.compile(r"^shard-(\d{5})-of-(\d{5})$")
BACKFILL_TAG = "dagster/backfill"


def shard_partitions(n: int) -> dg.StaticPartitionsDefinition:
    """``n`` partitions ``shard-00000-of-0000n`` .. : one per shard of the dataset's source."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000:
        raise dg.DagsterInvalidDefinitionError(f"shard_partitions needs 1 to 10000 shards, got {n!r}")
    return dg.StaticPartitionsDefinition([f"shard-{i:05d}-of-{n:05d}" for i in range(n)])


def is_shard_partitions(partitions: Any) -> bool:
    return isinstance(partitions, dg.StaticPartitionsDefinition) and all(
        _KEY.match(k) for k in partitions.get_partition_keys()
    )


def shard_of_key(key: str) -> tuple[int, int] | None:
    """(index, number of shards) of a shard partition key, else ``None``."""
    m = _KEY.match(key)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_partition_shard(
    context: dg.AssetExecutionContext,
    source: str | list[str],
    destination: str,
    key: str,
    storage_options: dict[str, Any] | None,
) -> Shard:
    """The shard of partition ``key``: from the backfill's plan (or this run's), made if missing."""
    index, n = shard_of_key(key) or (0, 0)
    tags = getattr(getattr(context, "run", None), "tags", None) or {}
    plan_id = f"dagster-{tags.get(BACKFILL_TAG) or context.run_id}"
    urls = plan_shards(source, destination, n, "hash", storage_options, plan_id=plan_id)
    return read_shard(urls[index], storage_options)
