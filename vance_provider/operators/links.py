"""Where a batch's outputs can be seen: the "VanceAI outputs" extra link and the URLs behind it.

Imported when a DAG file is parsed (the batch operator declares the link): the core is imported
only for a destination that needs its URL redacted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from airflow.sdk.execution_time.xcom import XCom

from vance_provider.airflow_compat import BaseOperator, BaseOperatorLink, conf

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey

#: The XCom key under which a batch task pushes the link of its rendered destination.
LINK_XCOM_KEY = "vanceai_outputs_url"


def asset_uri(destination: str) -> str:
    """The destination as an Asset URI (``file://`` and an absolute path for a local folder)."""
    if "://" in destination:
        return destination
    return "file://" + os.path.abspath(destination)


def console_url(destination: str | None) -> str:
    """A browsable URL for a storage location, where one exists."""
    if not destination:
        return ""
    if destination.startswith(("http://", "https://")):
        return destination
    scheme, _, rest = destination.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme in ("s3", "s3a"):
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={prefix}"
    if scheme in ("gs", "gcs"):
        return f"https://console.cloud.google.com/storage/browser/{bucket}/{prefix}"
    return ""


def outputs_url(destination: str | None) -> str:
    """Where the extra link leads for a destination of any kind: the cloud console for S3 and GCS,
    a ``file://`` URL for a local folder, else the destination's own URL (without a query string
    or a password)."""
    if not destination:
        return ""
    url = console_url(destination)
    if url and not destination.startswith(("http://", "https://")):
        return url
    if "://" not in destination or destination.startswith("file://"):
        path = destination.removeprefix("file://")
        return Path(os.path.abspath(path)).as_uri() + ("/" if path.endswith("/") else "")
    from vance_provider.core.secrets import redact_url

    return redact_url(destination.split("?", 1)[0])


def task_xcom_page(ti_key: TaskInstanceKey) -> str:
    """The Airflow UI's page of the task's XComs (its return value lists the outputs and the
    preview), as a path on the UI's own origin, under ``[api] base_url``'s path if it has one."""
    base = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    page = f"{base}/dags/{quote(ti_key.dag_id, safe='')}/runs/{quote(ti_key.run_id, safe='')}"
    page += f"/tasks/{quote(ti_key.task_id, safe='')}"
    if ti_key.map_index is not None and ti_key.map_index >= 0:
        page += f"/mapped/{ti_key.map_index}"
    return page + "/xcom"


class VanceAIDestinationLink(BaseOperatorLink):
    """'VanceAI outputs': the destination in the cloud console (S3 / GCS), the destination's own URL
    for other stores, and for a local folder the task's XCom page (its return value lists the
    outputs and the preview): Airflow's UI shows only http(s) and same-origin links, not ``file://``.

    The task pushes the link of its *rendered* destination to XCom when it starts, so a templated
    destination (``s3://out/{{ ds }}/``) links to the right place.
    """

    name = "VanceAI outputs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:  # type: ignore[override]
        try:
            url = XCom.get_value(ti_key=ti_key, key=LINK_XCOM_KEY)
        except Exception:  # no XCom backend reachable (say, in a unit test)
            url = None
        if not url:
            destination = getattr(operator, "destination", None)
            url = "" if destination is None or "{{" in str(destination) else outputs_url(str(destination))
        if str(url).startswith("file:"):
            return task_xcom_page(ti_key)
        return str(url)
