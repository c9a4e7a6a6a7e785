"""Airflow's ``ObjectStoragePath`` as an operator's source or destination.

An ``ObjectStoragePath`` carries its connection in its URL (``s3://aws_default@bucket/in``). The
operators take its plain URL (``s3://bucket/in``) and use its connection as ``storage_conn_id``,
so the files are read and written with that connection's credentials.
"""

from __future__ import annotations

from typing import Any


def _is_object_storage_path(value: Any) -> bool:
    # Duck-typed: a universal_pathlib path (Airflow's ObjectStoragePath is one on every version).
    return (
        type(value).__name__ == "ObjectStoragePath" and hasattr(value, "protocol") and hasattr(value, "path")
    )


def _url(path: Any) -> tuple[str, str | None]:
    # Airflow >= 3.1 has ``conn_id``; 3.0 keeps it in the storage options.
    conn_id = getattr(path, "conn_id", None) or (getattr(path, "storage_options", None) or {}).get("conn_id")
    protocol = path.protocol or "file"
    location = str(path.path)
    if protocol == "file":
        return location if location.startswith("/") else f"file://{location}", conn_id
    return f"{protocol}://{location}", conn_id


def adopt_object_storage(kwargs: dict[str, Any], *values: Any) -> list[Any]:
    """``values`` with every ``ObjectStoragePath`` (alone or in a list) turned into its plain URL.

    The paths' connection becomes ``kwargs["storage_conn_id"]`` unless one was given. Paths with
    different connections cannot share one operator: a ``ValueError`` says so.
    """
    conn_ids: set[str] = set()

    def convert(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if not _is_object_storage_path(value):
            return value
        url, conn_id = _url(value)
        if conn_id:
            conn_ids.add(conn_id)
        return url

    converted = [convert(v) for v in values]
    if len(conn_ids) > 1:
        raise ValueError(
            f"the ObjectStoragePath arguments use different connections ({', '.join(sorted(conn_ids))}); "
            "one operator reads and writes with one storage connection"
        )
    given = kwargs.get("storage_conn_id")
    if conn_ids:
        (conn_id,) = conn_ids
        if given and given != conn_id:
            raise ValueError(
                f"storage_conn_id={given!r} differs from the ObjectStoragePath's connection {conn_id!r}"
            )
        kwargs["storage_conn_id"] = conn_id
    return converted
