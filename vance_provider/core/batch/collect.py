"""Who paid for a collected result: this run, or an earlier one whose job it took over. A
result is paid for once; the manifest's charges say by whom."""

from __future__ import annotations

import time
from typing import Any

from ..state.manifest import ManifestItem


def fetch_of(item: ManifestItem, job_id: str) -> dict[str, Any] | None:
    """The item's record of a download begun for ``job_id`` (web API: the download is the
    payment), if there is one."""
    fetch = item.fetch
    return fetch if isinstance(fetch, dict) and fetch.get("job_id") == job_id else None


def paid_before(
    item: ManifestItem, job_id: str, charges_on_download: bool, run_id: str, ended_before: bool
) -> dict[str, Any] | None:
    """Whether job ``job_id`` was (or may have been) paid for before this run collects it, and
    by whom (``run``, ``at``): ``None`` if collecting it is this run's payment.

    - A charge for this job is in the manifest already (a key replayed a paid job).
    - Web API (paid at the first download): another run recorded that it began downloading it.
    - Open API (paid at the job's end): it had ended when this run first saw it
      (``ended_before``), and this run did not create it (or its key replayed it ended)."""
    for c in item.charges:
        if c.get("job_id") == job_id:
            return {"run": c.get("run"), "at": c.get("charged_at") or c.get("at")}
    if charges_on_download:
        fetch = fetch_of(item, job_id)
        if fetch is not None and fetch.get("run") != run_id:
            return {"run": fetch.get("run"), "at": fetch.get("at")}
        return None
    if ended_before:
        return {"run": item.submitted_by, "at": None}
    return None


def with_charge(
    charges: list[dict[str, Any]], job_id: str, cost: float, run_id: str, earlier: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The item's charges with this collection recorded: this run's charge, or (``earlier``: a
    result paid for by another run) that run's charge, collected by this one, if it was not
    recorded yet."""
    now = time.time()
    if earlier is None:
        return [*charges, {"job_id": job_id, "credits": cost, "at": now, "run": run_id}]
    if any(c.get("job_id") == job_id for c in charges):
        return charges
    return [
        *charges,
        {
            "job_id": job_id,
            "credits": cost,
            "at": now,
            "charged_at": earlier.get("at") or now,
            "run": earlier.get("run"),
            "collected_by": run_id,
        },
    ]


def run_charges(items: list[ManifestItem], run_id: str) -> tuple[float, float]:
    """What run ``run_id`` has paid for these items (its own charges), and what it collected of
    results another run paid for: read back from the manifest when the run is resumed."""
    paid = taken_over = 0.0
    for item in items:
        for c in item.charges:
            if c.get("collected_by") == run_id:
                taken_over += float(c.get("credits") or 0.0)
            elif c.get("run") == run_id and not c.get("collected_by"):
                paid += float(c.get("credits") or 0.0)
    return paid, taken_over
