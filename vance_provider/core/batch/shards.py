"""Split one listing of a flat source into N shards, handed over through object storage.

:func:`plan_shards` lists the source once and writes one small JSON file per shard under the
destination (``<destination>/_vance_shards/<plan-id>/shard-00003.json``, each written atomically,
then ``plan.json`` last: a plan whose ``plan.json`` exists is complete). Only the shard files' URLs
travel through XCom or a Dagster partition; each mapped task or partition reads its own file
(:func:`read_shard`) and runs an ordinary batch over it (:func:`shard_spec`).

Two ways to split:

- ``by="count"``: contiguous runs of the sorted listing, balanced (sizes differ by at most one,
  but for inputs kept together, below). For a plan made once and run to its end.
- ``by="hash"``: an input goes to ``sha256(name) mod n``. Adding or removing files moves no other
  file to another shard, so runs on a schedule, with the same ``n``, keep each input in the shard
  (and the manifest) that already knows it.

What keeps shards apart, as one batch would be:

- The outputs share the destination (as one batch's would), and each shard keeps a manifest of
  its own (``<destination>/_vance_shards/manifests/<by>-<n>/shard-00003.json``) and a lease of its
  own (scope ``shard:<by>:<n>:<i>``): two shards never share a manifest or a lease.
- Inputs whose outputs would have the same name (``a.jpg`` and ``a.png``, ``A.jpg`` and ``a.jpg``,
  ``x/a.jpg`` and ``y/a.jpg``) always land in the same shard, whose batch names them apart; so
  no two shards ever write one output. A shard's batch names outputs by the file's name: sub-folders
  of the source are not kept (the source is meant to be flat).

A shard file holds the input URLs, sizes and fingerprints of the one listing, the destination and
the shard's manifest; never a storage option (they hold credentials), and no URL with a credential
in it (such a source is refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from fsspec.core import url_to_fs

from ..api.errors import ConfigurationError, InvalidConfigError, InvalidInputError, ManifestError
from ..secrets import redact, redact_url
from ..state.storage import (
    SourceFile,
    check_no_overlap,
    join,
    list_sources,
    safe_name,
    write_bytes_atomic,
)
from .spec import BatchSpec

ShardBy = Literal["count", "hash"]
SHARDS_DIR = "_vance_shards"
PLAN_NAME = "plan.json"
FORMAT = 1
MAX_SHARDS = 10_000


@dataclass(frozen=True)
class ShardEntry:
    """One input of a shard, as the one listing saw it."""

    url: str
    size: int
    fingerprint: str


@dataclass(frozen=True)
class Shard:
    """A shard file, read: which inputs, where they go, which manifest and lease are its own."""

    url: str
    plan_id: str
    index: int
    count: int
    by: ShardBy
    destination: str
    manifest: str
    lease_scope: str
    files: tuple[ShardEntry, ...]

    @property
    def sources(self) -> list[str]:
        """The input URLs: a batch's ``source``."""
        return [f.url for f in self.files]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def output_stem(url: str) -> str:
    """The name (lower-cased, without extension) a batch gives the output of ``url`` when the
    source is a list of files (see ``planning.plan_outputs``): inputs with one stem share a shard."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return str(PurePosixPath(safe_name(name)).with_suffix("")).lower()


def hash_shard(url: str, n: int) -> int:
    """The shard of an input under ``by="hash"``: stable across processes, runs and listings."""
    digest = hashlib.sha256(output_stem(url).encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def split(files: Iterable[SourceFile], n: int, by: ShardBy) -> list[list[SourceFile]]:
    """The listing split into ``n`` shards (a file in exactly one; same-stem files together)."""
    groups: dict[str, list[SourceFile]] = {}
    for f in sorted(files, key=lambda f: (output_stem(f.url), f.url)):
        groups.setdefault(output_stem(f.url), []).append(f)
    shards: list[list[SourceFile]] = [[] for _ in range(n)]
    if by == "hash":
        for members in groups.values():
            shards[hash_shard(members[0].url, n)].extend(members)
        return shards
    total = sum(len(m) for m in groups.values())
    before = 0
    for members in groups.values():  # contiguous: a group starts in the shard its position falls in
        shards[min(n - 1, before * n // max(total, 1))].extend(members)
        before += len(members)
    return shards


def plan_root(destination: str, plan_id: str) -> str:
    return join(join(destination, SHARDS_DIR), plan_id)


def shard_manifest_url(destination: str, index: int, n: int, by: ShardBy) -> str:
    """A shard's own manifest: the same for every plan with the same ``by`` and ``n``, so that the
    next plan of a hash-sharded source resumes each shard where the last one left it."""
    return join(join(join(destination, SHARDS_DIR), "manifests"), f"{by}-{n}/{shard_name(index)}.json")


def shard_lease_scope(index: int, n: int, by: ShardBy) -> str:
    return f"shard:{by}:{n}:{index}"


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def clean_plan_id(plan_id: str) -> str:
    """A plan id safe as a folder name (an Airflow run id has ``:`` and ``+``); distinct ids stay
    distinct (a short hash of the original is added when characters had to be replaced)."""
    clean = _UNSAFE_ID.sub("_", plan_id).strip("._")[:80]
    if clean != plan_id:
        clean = f"{clean or 'plan'}-{hashlib.sha256(plan_id.encode()).hexdigest()[:8]}"
    return clean


def _check_args(n: int, by: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise InvalidConfigError(
            f"the number of shards must be a whole number from 1 to {MAX_SHARDS}, got {n!r}"
        )
    if by not in ("count", "hash"):
        raise InvalidConfigError(f"by must be 'count' or 'hash', got {by!r}")


def _no_credential(url: str) -> None:
    if redact_url(url) != url:
        raise ConfigurationError(
            f"the input {redact_url(url)} carries a credential in its URL; it is not written to a shard file",
            hint="give the store's credentials as storage options (or a storage connection), not in URLs",
        )


def _described(source: str | list[str]) -> str | list[str]:
    return redact_url(source) if isinstance(source, str) else [redact_url(s) for s in source]


def plan_shards(
    source: str | list[str],
    destination: str,
    n: int,
    by: ShardBy = "hash",
    storage_options: dict[str, Any] | None = None,
    *,
    plan_id: str | None = None,
    skip_empty: bool = False,
) -> list[str]:
    """List ``source`` once, split it into ``n`` shards and write a shard file for each; return
    their URLs (``n`` of them, in order; a shard may be empty).

    ``plan_id`` names the plan (say, an Airflow run id): a plan of that id already written is
    returned as it is, without listing the source again, so a retried planning task hands out
    the same shards. Without one, the id is made from the listing itself: the same files give the
    same plan. Spends nothing; ``storage_options`` are used to list and write, never written.
    """
    _check_args(n, by)
    so = storage_options
    if plan_id is not None:
        found = _existing(plan_root(destination, clean_plan_id(plan_id)), source, destination, n, by, so)
        if found is not None:
            return _kept(found, skip_empty)
    for url in [source, destination] if isinstance(source, str) else [*source, destination]:
        _no_credential(url)
    check_no_overlap(source, destination, so)
    files = list_sources(source, None, so)
    for f in files:
        _no_credential(f.url)
    if plan_id is None:
        listing = "\n".join(f"{f.url}\t{f.fingerprint}" for f in files)
        plan_id = f"{by}-{n}-" + hashlib.sha256(listing.encode()).hexdigest()[:16]
    pid = clean_plan_id(plan_id)
    root = plan_root(destination, pid)
    urls, counts = [], []
    for index, members in enumerate(split(files, n, by)):
        body = {
            "format": FORMAT,
            "plan": pid,
            "shard": index,
            "shards": n,
            "by": by,
            "destination": destination,
            "manifest": shard_manifest_url(destination, index, n, by),
            "lease_scope": shard_lease_scope(index, n, by),
            "files": [{"url": f.url, "size": f.size, "fingerprint": f.fingerprint} for f in members],
        }
        url = join(root, f"{shard_name(index)}.json")
        write_bytes_atomic(url, json.dumps(body, indent=0).encode(), so)
        urls.append(url)
        counts.append(len(members))
    plan = {
        "format": FORMAT,
        "plan": pid,
        "shards": n,
        "by": by,
        "source": _described(source),
        "destination": destination,
        "inputs": len(files),
        "shard_files": urls,
        "counts": counts,
    }
    write_bytes_atomic(join(root, PLAN_NAME), json.dumps(plan, indent=1).encode(), so)
    return _kept(plan, skip_empty)


def _kept(plan: dict[str, Any], skip_empty: bool) -> list[str]:
    urls, counts = list(plan["shard_files"]), list(plan["counts"])
    return [u for u, c in zip(urls, counts, strict=True) if c or not skip_empty]


def _existing(
    root: str, source: str | list[str], destination: str, n: int, by: str, so: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The complete plan at ``root``, if there is one (made with the same arguments)."""
    fs, path = url_to_fs(join(root, PLAN_NAME), **(so or {}))
    try:
        plan = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        raise ManifestError(f"the shard plan {join(root, PLAN_NAME)} is not readable JSON") from None
    asked = {"shards": n, "by": by, "source": _described(source), "destination": destination}
    differs = {k: plan.get(k) for k, v in asked.items() if plan.get(k) != v}
    if differs:
        raise ConfigurationError(
            f"the shard plan {join(root, PLAN_NAME)} was made with other arguments "
            f"({', '.join(f'{k}={v!r}' for k, v in differs.items())})",
            hint="give another plan_id, or the same arguments as the plan",
        )
    return dict(plan)


def read_shard(url: str, storage_options: dict[str, Any] | None = None) -> Shard:
    """Read a shard file written by :func:`plan_shards`."""
    fs, path = url_to_fs(url, **(storage_options or {}))
    try:
        body = json.loads(fs.cat_file(path))
        if body.get("format") != FORMAT:
            raise ValueError(f"format {body.get('format')!r}")
        return Shard(
            url=url,
            plan_id=str(body["plan"]),
            index=int(body["shard"]),
            count=int(body["shards"]),
            by=body["by"],
            destination=str(body["destination"]),
            manifest=str(body["manifest"]),
            lease_scope=str(body["lease_scope"]),
            files=tuple(
                ShardEntry(str(f["url"]), int(f["size"]), str(f["fingerprint"])) for f in body["files"]
            ),
        )
    except FileNotFoundError:
        raise InvalidInputError(
            "the shard file does not exist",
            source=redact_url(url),
            hint="plan the shards first (plan_shards)",
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(
            f"{redact_url(url)} is not a shard file ({redact(str(exc))})",
            hint="plan the shards again with another plan_id",
        ) from None


def shard_spec(shard: Shard, **options: Any) -> BatchSpec:
    """The batch of one shard: its inputs, the shared destination, its own manifest and lease.
    ``options`` are the other :class:`BatchSpec` fields (tool, config, storage_options, ...)."""
    own = {"source", "destination", "manifest", "lease_scope"}
    if own & options.keys():
        raise InvalidConfigError(f"a shard sets {', '.join(sorted(own & options.keys()))} itself")
    options.setdefault("allow_empty", True)  # a shard may be empty (more shards than inputs)
    return BatchSpec(
        source=shard.sources,
        destination=shard.destination,
        manifest=shard.manifest,
        lease_scope=shard.lease_scope,
        **options,
    )


def with_shard(spec: BatchSpec, shard: Shard) -> BatchSpec:
    """``spec`` narrowed to one shard (its inputs, destination, manifest and lease)."""
    return dataclasses.replace(
        spec,
        source=shard.sources,
        destination=shard.destination,
        manifest=shard.manifest,
        lease_scope=shard.lease_scope,
        allow_empty=True,
    )
