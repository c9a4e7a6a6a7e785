"""Planning a batch: which inputs there are, what their outputs are called, which are new, and
whether each can be sent. Nothing here uploads or spends."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from fsspec.core import url_to_fs

from ..api.errors import InvalidInputError, ManifestError
from ..api.models import ApiName, Media
from ..inputs import InputInfo, check_input
from ..secrets import redact_options
from ..state.cache import sha256_of
from ..state.manifest import Manifest, ManifestItem
from ..state.storage import (
    MAX_NAME_BYTES,
    MEDIA_EXTENSIONS,
    PARTIAL_MARK,
    OutputExistsError,
    SourceFile,
    is_engine_file,
    is_local,
    list_sources,
    location,
    safe_name,
    suffix_of,
    without_suffix,
)
from ..tools import ToolCall
from .spec import BatchSpec

log = logging.getLogger("vance_provider.batch")


class CyclicGCPause:
    """Python's cyclic garbage collector paused while a batch is listed and planned: the many
    objects planning makes (none of them in a cycle) would trigger full collections again and
    again, about a quarter of the planning's CPU at 100k inputs. Reference counting frees
    memory as usual meanwhile. The collector runs again at :meth:`resume` or at the end of the
    ``with`` block, whichever comes first; a pause inside another leaves that to the outer one."""

    def __init__(self) -> None:
        self._resume = False

    def __enter__(self) -> CyclicGCPause:
        self._resume = gc.isenabled()
        gc.disable()
        return self

    def resume(self) -> None:
        if self._resume:
            self._resume = False
            gc.enable()

    def __exit__(self, *exc: object) -> None:
        self.resume()


def call_hash(call: ToolCall) -> str:
    return hashlib.sha256(call.fingerprint().encode()).hexdigest()[:16]


def plan_outputs(
    sources: list[SourceFile], destination: str, call: ToolCall, reserved: dict[str, str] | None = None
) -> dict[str, str]:
    """Output URL stem per input: safe names, same sub-folders, collisions made distinct.

    ``reserved`` (source -> output, from the manifest) keeps earlier output names: an input keeps
    its name, and no other input, even one added later that sorts first, is given it.
    """
    prefix = destination.rstrip("/") + "/"
    kept: dict[str, str] = {}
    for url, out in (reserved or {}).items():
        if out.startswith(prefix):
            rel = PurePosixPath(out[len(prefix) :])
            kept[url] = str(rel.with_suffix("") if rel.suffix.lower() in MEDIA_EXTENSIONS else rel)
    planned: dict[str, str] = {}
    taken: set[str] = {stem.lower() for stem in kept.values()}
    ext = call.output_format or ("mp4" if call.media == "video" else None)
    tail = f".{ext}" if ext else ""
    for src in sources:
        stem = kept.get(src.url)
        if stem is None:
            name = src.relative
            stem = without_suffix(name if _already_safe(name) else safe_name(name))
            if stem.lower() in taken:
                stem = f"{stem}-{hashlib.sha256(src.url.encode()).hexdigest()[:6]}"
            taken.add(stem.lower())
        planned[src.url] = prefix + (stem + tail).lstrip("/")
    return planned


# A relative name that safe_name() returns unchanged: ASCII word characters, dots and dashes, parts
# that neither start nor end with a dot, no engine name, short. Most names are: they skip the work.
_SAFE_PART = r"[\w\-](?:[\w.\-]*[\w\-])?"
_SAFE_RELATIVE = re.compile(rf"{_SAFE_PART}(?:/{_SAFE_PART})*", re.ASCII)


def _already_safe(relative: str) -> bool:
    return (
        len(relative) <= MAX_NAME_BYTES
        and "_vance" not in relative
        and _SAFE_RELATIVE.fullmatch(relative) is not None
    )


def as_recorded(
    spec: BatchSpec, manifest: Manifest, sources: list[SourceFile], ignored: list[tuple[str, str]]
) -> tuple[BatchSpec, list[SourceFile]]:
    """The same source or destination spelled another way than the manifest records it (a
    trailing slash, ``./``, a symlinked folder, ``file://``): the run goes on with the
    manifest's spelling, so that its items and outputs are recognised (not refused as
    another batch's, nor paid for again). Returns the spec as recorded and its sources (listed
    again, into ``ignored``, if the source was respelled)."""
    so = spec.storage_options
    known = manifest.meta.get("identity")
    if not isinstance(known, dict):
        return spec, sources

    def respelled(recorded: Any, given: Any) -> bool:
        if not isinstance(recorded, str) or not isinstance(given, str) or recorded == given.rstrip("/"):
            return False
        try:
            return location(recorded, so) == location(given, so)
        except Exception:
            return False

    if respelled(known.get("destination"), spec.destination):
        log.info("the destination %s is recorded as %s: using that", spec.destination, known["destination"])
        spec = dataclasses.replace(spec, destination=known["destination"])
    if respelled(known.get("source"), spec.source):
        log.info("the source %s is recorded as %s: using that", spec.source, known["source"])
        spec = dataclasses.replace(spec, source=known["source"])
        ignored.clear()
        sources = list_sources(spec.source, None, so, ignored)
    return spec, sources


def config_shown(spec: BatchSpec) -> dict[str, Any]:
    """The batch's settings as the user gave them, for a refusal that shows what differs."""
    shown: dict[str, Any] = {"config": redact_options(spec.config or {})}
    if spec.jconfig is not None:
        shown["jconfig"] = redact_options(spec.jconfig)
    if spec.output_format:
        shown["output_format"] = spec.output_format
    return shown


def recognise_touched(
    manifest: Manifest, sources: list[SourceFile], chash: str, storage_options: dict[str, Any] | None
) -> None:
    """Inputs listed with another fingerprint (a new mtime, a store's multipart ETag) but the
    same size are hashed: the same bytes as recorded make them the same input (``listed_as``
    records the new listing), so a touched file, a copy without ``-p`` or a restore from a
    backup costs nothing. Another size, or other bytes, is another input."""
    if not manifest.items:  # nothing recorded (a first run): nothing touched
        return
    candidates = [
        (src, item)
        for src in sources
        if (item := manifest.items.get(src.url)) is not None
        and item.call == chash
        and not same_listing(item, src)
        and item.input_sha256
        and fingerprint_size(item.fingerprint) == src.size
    ]
    if not candidates:
        return
    digests = hash_inputs([src.url for src, _ in candidates], storage_options)
    same = 0
    for (src, item), digest in zip(candidates, digests, strict=True):
        if digest is not None and digest == item.input_sha256:
            item.listed_as = src.fingerprint
            same += 1
    if same:
        manifest.touch()
        log.info("%d input(s) touched but unchanged (same bytes): kept as they were", same)


def refuse_overwrites(
    sources: list[SourceFile],
    outputs: dict[str, str],
    own: set[str],
    present: set[str],
    dest_fs: Any,
) -> None:
    """Refuse, before any spend, a batch that would write over files already in the
    destination that its manifest does not record as its own: another batch's paid results
    (say, after ``fresh=True``), or the user's files (unless the batch has ``overwrite=True``)."""
    if all(is_engine_file(p.rsplit("/", 1)[-1]) for p in present):  # nothing to write over (a first run)
        return
    # A web API output's extension is known only at the download: compare names without it.
    mine = {stem_of(dest_fs._strip_protocol(o)) for o in own}
    there = {p.lower() for p in present}
    there_stems = {stem_of(p) for p in present}
    clashes = []
    for src in sources:
        path = dest_fs._strip_protocol(outputs[src.url])
        stem = stem_of(path)
        taken = stem in there_stems if stem == path.lower() else path.lower() in there
        if taken and stem not in mine:
            clashes.append((src.url, outputs[src.url]))
    if clashes:
        first_src, first_out = clashes[0]
        raise OutputExistsError(
            f"{len(clashes)} output(s) would be written over files already in the destination "
            f"that this batch did not write; the first: {first_out} (for {first_src})",
            hint="they may be another batch's paid results: write this batch to another "
            "destination, or move those files aside; to replace them, pass overwrite=True "
            "(--overwrite)",
        )


def same_listing(item: ManifestItem, src: SourceFile) -> bool:
    """The input is listed as the manifest knows it (or as it was last seen with the same bytes)."""
    return src.fingerprint in (item.fingerprint, item.listed_as)


def stem_of(path: str) -> str:
    """``path`` without a media extension, lower-cased (``out/a.JPG`` and ``out/a`` are one name)."""
    return (without_suffix(path) if suffix_of(path) in MEDIA_EXTENSIONS else path).lower()


def fingerprint_size(fingerprint: str) -> int | None:
    """The size recorded in a fingerprint (``<size>:<etag or mtime>``), if it has one."""
    head = fingerprint.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def hash_inputs(urls: list[str], storage_options: dict[str, Any] | None) -> list[str | None]:
    """The SHA-256 of each input (``None`` where it cannot be read); remote ones 16 at a time."""

    def one(url: str) -> str | None:
        try:
            return sha256_of(url, storage_options)
        except Exception:
            return None

    if urls and not is_local(url_to_fs(urls[0], **(storage_options or {}))[0]):
        with ThreadPoolExecutor(16, thread_name_prefix="vance-hash") as pool:
            return list(pool.map(one, urls))
    return [one(u) for u in urls]


def list_outputs(fs: Any, path: str) -> set[str]:
    """Every file under the destination, in one listing (not one ``exists`` per output); local
    partial downloads left by a killed run are removed on the way, when this batch's lease is the
    only one there (shards of a batch share a destination, each with its own lease: the partial
    files of another may be live)."""
    try:
        found = set(fs.find(path))
    except (FileNotFoundError, NotADirectoryError):
        return set()
    names = {p: p.rsplit("/", 1)[-1] for p in found}
    leases = sum(1 for name in names.values() if is_engine_file(name) and name.endswith(".lock"))
    if is_local(fs) and leases <= 1:
        for p in [p for p, name in names.items() if PARTIAL_MARK in name]:
            try:
                os.remove(p)
            except OSError:
                pass
            found.discard(p)
    return found


CHECK_CHUNK = 256  # inputs checked per thread hop


def check_inputs(
    inputs: list[tuple[str, int, bool]],
    media: Media,
    api: ApiName,
    storage_options: dict[str, Any] | None,
    local_outputs: list[str] | None,
) -> list[InputInfo | Exception]:
    """Check inputs (url, size, whether its SHA-256 is wanted) in one call from the event loop
    (a thread hop per input cost ~0.3 s per 1000 inputs before the first job); remote ones are
    read 16 at a time. ``local_outputs``: the outputs' folders are made too (once each).

    Only an input whose SHA-256 is wanted now is read whole; the others, by their header (the
    upload's reader checks and hashes the rest: each byte is read once)."""

    def one(entry: tuple[str, int, bool]) -> InputInfo | Exception:
        url, size, want_sha256 = entry
        try:
            return check_input(
                url, size, media, api, storage_options, want_sha256=want_sha256, whole=want_sha256
            )
        except Exception as exc:
            return exc

    if inputs and not is_local(url_to_fs(inputs[0][0], **(storage_options or {}))[0]):
        with ThreadPoolExecutor(16, thread_name_prefix="vance-check") as pool:
            results = list(pool.map(one, inputs))
    else:  # local disk: threads do not make decoding faster here (measured)
        results = [one(entry) for entry in inputs]
    folders: dict[str, Exception | None] = {}
    for k, output in enumerate(local_outputs or []):
        if isinstance(results[k], Exception):
            continue
        parent = os.path.dirname(output)
        if parent not in folders:
            try:
                make_parent(output)
                folders[parent] = None
            except Exception as exc:
                folders[parent] = exc
        results[k] = folders[parent] or results[k]
    return results


def make_parent(output: str) -> None:
    """Create a local output's folder before its job is paid for (a file in the way fails now)."""
    parent = os.path.dirname(output)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"the output folder {parent} cannot be created ({exc.strerror or type(exc).__name__})",
            source=output,
            hint="a file may stand where the folder should be: move it away",
        ) from None


def check_inside(item: ManifestItem, destination: str) -> None:
    """Nothing is ever written outside the destination (a last guard: manifests are checked
    when they are read)."""
    prefix = destination.rstrip("/") + "/"
    out = item.output or ""
    rest = out[len(prefix) :] if out.startswith(prefix) else ""
    if not rest or ".." in rest.replace("\\", "/").split("/"):
        raise ManifestError(
            f"{item.source}: its output {out or None!r} is not inside the destination "
            f"{destination}; nothing was written",
            hint="the manifest was edited? Start afresh with fresh=True (--fresh)",
        )
