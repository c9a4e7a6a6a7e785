"""The content-addressed result cache (core/state/cache.py), on local disk and on S3 (moto on loopback)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from PIL import Image

from tests.conftest import image_bytes
from vance_provider.core.api.errors import InvalidConfigError
from vance_provider.core.secrets import Secret
from vance_provider.core.state.cache import (
    CacheCorruptError,
    CacheKey,
    HashingReader,
    ResultCache,
    cache_key,
    canonical_config,
    key_for_call,
    open_hashing,
    parse_age,
    sha256_of,
)
from vance_provider.core.tools import resolve

DAY = 86400.0
T0 = 1_750_000_000.0  # a fixed "now" for records and hits
FAR = 4_000_000_000.0  # after every file's modification time


@dataclass
class Place:
    """A folder on one store: local disk or an S3 bucket."""

    kind: str
    base: str  # URL of the folder
    options: dict[str, Any]
    fs: Any

    def url(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def path(self, rel: str) -> str:
        return fsspec.core.url_to_fs(self.url(rel), **self.options)[1]

    def put(self, rel: str, data: bytes) -> str:
        self.fs.pipe(self.path(rel), data) if self.kind == "s3" else _write_local(self.path(rel), data)
        return self.url(rel)

    def cat(self, url: str) -> bytes:
        with fsspec.open(url, "rb", **self.options) as fh:
            return bytes(fh.read())

    def exists(self, url: str) -> bool:
        fs, path = fsspec.core.url_to_fs(url, **self.options)
        fs.invalidate_cache()
        return bool(fs.exists(path))


def _write_local(path: str, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        return Place("local", str(tmp_path), {}, fsspec.filesystem("file"))
    fs, options, bucket = request.getfixturevalue("s3")
    return Place("s3", f"s3://{bucket}", options, fs)


def key_of(data: bytes, tool: str = "upscale", config: Any = None) -> CacheKey:
    return cache_key(hashlib.sha256(data).hexdigest(), "open", tool, config or {"scale": 2})


def make_cache(place: Place, **kwargs: Any) -> ResultCache:
    return ResultCache(place.url("vance-cache/"), place.options, **kwargs)


def entry_files(place: Place, key: CacheKey) -> dict[str, str]:
    """name -> fs path of the files of one entry."""
    d = key.digest
    where = place.path(f"vance-cache/v1/objects/{d[:2]}/{d}")
    place.fs.invalidate_cache()
    try:
        return {p.rsplit("/", 1)[1]: p for p in place.fs.find(where)}
    except FileNotFoundError:
        return {}


def stored(place: Place, cache: ResultCache, data: bytes, name: str = "r1.jpg", **kwargs: Any) -> Any:
    """A result on the store (as the engine would have downloaded it), kept in the cache."""
    src = place.put(f"results/{name}", data)
    kwargs.setdefault("job_id", "job-1")
    kwargs.setdefault("credits", 2.0)
    kwargs.setdefault("now", T0)
    return cache.store(key_of(b"input"), src, storage_options=place.options, **kwargs)


# --- keys ------------------------------------------------------------------------------------------
def test_key_is_determined_by_input_api_tool_config_and_model() -> None:
    sha = hashlib.sha256(b"pixels").hexdigest()
    base = cache_key(sha, "open", "upscale", {"scale": 2, "suffix": "x"})
    assert base == cache_key(sha.upper(), "open", "upscale", {"suffix": "x", "scale": 2})
    assert base.digest == cache_key(sha, "open", "upscale", '{ "suffix": "x",  "scale": 2 }').digest
    assert str(base) == base.digest and len(base.digest) == 64
    others = [
        cache_key(hashlib.sha256(b"other").hexdigest(), "open", "upscale", {"scale": 2, "suffix": "x"}),
        cache_key(sha, "web", "upscale", {"scale": 2, "suffix": "x"}),
        cache_key(sha, "open", "denoise", {"scale": 2, "suffix": "x"}),
        cache_key(sha, "open", "upscale", {"scale": 4, "suffix": "x"}),
        cache_key(sha, "open", "upscale", {"scale": 2, "suffix": "x"}, model_version="v2"),
    ]
    assert len({k.digest for k in [base, *others]}) == 6
    for bad in ("", "abc", "z" * 64, None):
        with pytest.raises(ValueError):
            cache_key(bad, "open", "upscale", {})  # type: ignore[arg-type]
    assert canonical_config(None) == "null" and canonical_config("not json") == "not json"


def test_key_for_a_resolved_tool_call() -> None:
    sha = hashlib.sha256(b"pixels").hexdigest()
    open2 = key_for_call(sha, resolve("upscale", {"scale": 2}, api="open"))
    assert open2 == key_for_call(sha, resolve("upscale", {"scale": 2}, api="open"))
    assert open2.api == "open" and open2.tool == resolve("upscale", api="open").vendor_tool
    assert open2 != key_for_call(sha, resolve("upscale", {"scale": 4}, api="open"))
    assert open2 != key_for_call(sha, resolve("upscale", {"scale": 2}, api="open", output_format="png"))
    web2 = key_for_call(sha, resolve("upscale", {"scale": 2}, api="web"))
    assert web2.api == "web" and web2.digest != open2.digest


# --- hashing ---------------------------------------------------------------------------------------
def test_sha256_of_streams_in_bounded_chunks(place: Place) -> None:
    data = random.Random(1).randbytes(300_001)
    url = place.put("in/big.bin", data)
    assert sha256_of(url, place.options, chunk=4096) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_hashing_reader_costs_no_extra_read_behind_a_decoder(tmp_path: Path, fmt: str) -> None:
    """A decoder judging the image (as core/media.decode_image does) hashes it on the way; only
    what it skipped is read again."""
    data = image_bytes(400, 300, fmt)
    path = tmp_path / f"a.{fmt.lower()}"
    path.write_bytes(data)
    with open_hashing(str(path)) as fh:
        with Image.open(fh) as img:  # type: ignore[arg-type]  # a file object to PIL
            assert img.size == (400, 300)
            if fmt == "PNG":
                img.verify()
            else:
                if fmt == "JPEG":
                    img.draft("RGB", (50, 37))
                img.load()
        assert fh.hexdigest() == hashlib.sha256(data).hexdigest()
        assert fh.size == len(data)
        assert fh.extra_bytes <= 16  # at most a trailer the decoder did not need (PNG's IEND)


def test_hashing_reader_is_right_whatever_the_reader_does() -> None:
    data = random.Random(2).randbytes(50_000)
    want = hashlib.sha256(data).hexdigest()
    rng = random.Random(3)
    for _ in range(200):
        reader = HashingReader(io.BytesIO(data), chunk=1000)
        for _ in range(rng.randint(0, 12)):
            op = rng.random()
            if op < 0.5:
                reader.read(rng.choice([-1, 0, 1, 17, 4096, 60_000]))
            elif op < 0.6:
                reader.readinto(bytearray(rng.randint(0, 5000)))
            elif op < 0.7:
                reader.readline()
            else:
                reader.seek(rng.randint(-100, 100), 1) if rng.random() < 0.3 and reader.tell() > 100 else None
                reader.seek(rng.randint(0, len(data) + 10))
        position = reader.tell()
        assert reader.hexdigest() == want
        assert reader.tell() == position  # completing the hash does not move the reader
    sequential = HashingReader(io.BytesIO(data))
    while sequential.read(777):
        pass
    assert sequential.hexdigest() == want and sequential.extra_bytes == 0


def test_parse_age() -> None:
    assert parse_age("90d") == 90 * DAY
    assert parse_age("12h") == 12 * 3600
    assert parse_age("30m") == 1800
    assert parse_age("45s") == 45
    assert parse_age("2w") == 14 * DAY
    assert parse_age(" 1d12h ") == 1.5 * DAY
    assert parse_age("1.5h") == 5400
    for bad in ("", "90", "d", "-1d", "1y", "1d junk", "h1"):
        with pytest.raises(InvalidConfigError, match="is not an age"):
            parse_age(bad)


# --- store and fetch -------------------------------------------------------------------------------
def test_miss_store_hit_roundtrip(place: Place) -> None:
    cache = make_cache(place)
    result = image_bytes(80, 60)
    key = key_of(b"input")
    assert cache.lookup(key) is None
    assert cache.fetch(key, place.url("out/a"), place.options) is None
    assert cache.stats().as_dict() == {"entries": 0, "bytes": 0, "hits": 0, "credits_saved": 0}

    entry = stored(place, cache, result, input_size=5)
    assert (entry.size, entry.sha256, entry.ext) == (len(result), hashlib.sha256(result).hexdigest(), "jpg")
    assert (entry.content_type, entry.credits, entry.job_id, entry.created_at) == (
        "image/jpeg",
        2.0,
        "job-1",
        T0,
    )
    rec = entry.record
    assert rec["input_sha256"] == hashlib.sha256(b"input").hexdigest() and rec["tool"] == "upscale"
    assert rec["input_size"] == 5 and rec["api"] == "open"

    hit = cache.fetch(key, place.url("out/a"), place.options)  # no extension: the entry's
    assert hit is not None and hit.output == place.url("out/a.jpg") and hit.credits_saved == 2.0
    assert place.cat(hit.output) == result
    hit2 = cache.fetch(key, place.url("out/sub/b.jpg"), place.options)  # an extension is kept
    assert hit2 is not None and hit2.output == place.url("out/sub/b.jpg")
    assert place.cat(hit2.output) == result
    stats = cache.stats()
    assert (stats.entries, stats.hits, stats.credits_saved) == (1, 2, 4.0)
    assert stats.bytes > len(result)  # the result and its record
    names = set(entry_files(place, key))
    assert names == {"record.json", entry.blob.rsplit("/", 1)[1]}  # no temporary files left


def test_server_side_copy_on_the_same_store_streamed_across_stores(
    place: Place, tmp_path: Path, s3: tuple[Any, dict[str, Any], str]
) -> None:
    cache = make_cache(place)
    result = image_bytes(40, 30, "PNG")
    stored(place, cache, result, name="r.png")
    key = key_of(b"input")
    same = cache.fetch(key, place.url("out/same"), place.options)
    assert same is not None and place.cat(same.output) == result
    assert same.server_side == (place.kind == "s3")  # a local copy is streamed (and its hash checked)
    if place.kind == "s3":
        other = str(tmp_path / "local-out" / "x")
        cross = cache.fetch(key, other)
        assert cross is not None and cross.output == other + ".png" and not cross.server_side
        assert Path(other + ".png").read_bytes() == result
    else:
        fs, options, bucket = s3
        cross = cache.fetch(key, f"s3://{bucket}/out/x", options)
        assert cross is not None and not cross.server_side
        assert fs.cat(f"{bucket}/out/x.png") == result


def test_store_keeps_a_sound_entry_and_the_first_writer_wins(place: Place) -> None:
    cache = make_cache(place)
    first = stored(place, cache, image_bytes(30, 30), name="first.jpg")
    again = stored(place, cache, image_bytes(31, 31), name="second.jpg", job_id="job-2")
    assert again == first and len(entry_files(place, key_of(b"input"))) == 2


def test_store_reads_the_result_type_from_its_bytes(place: Place) -> None:
    cache = make_cache(place)
    png = image_bytes(20, 20, "PNG")
    src = place.put("results/no-extension", png)
    entry = cache.store(key_of(b"x"), src, job_id=None, credits=1, storage_options=place.options)
    assert (entry.ext, entry.content_type) == ("png", "image/png")
    with pytest.raises(ValueError):
        cache.store(key_of(b"y"), src, job_id=None, credits=-1, storage_options=place.options)


def test_store_by_the_store_itself_when_the_hash_is_known(s3: tuple[Any, dict[str, Any], str]) -> None:
    fs, options, bucket = s3
    cache = ResultCache(f"s3://{bucket}/cache", options)
    data = image_bytes(50, 40)
    fs.pipe(f"{bucket}/out/a.jpg", data)
    sha = hashlib.sha256(data).hexdigest()
    entry = cache.store(
        key_of(b"in"),
        f"s3://{bucket}/out/a.jpg",
        job_id="j",
        credits=1,
        storage_options=options,
        result_sha256=sha,
    )
    assert entry.sha256 == sha and entry.size == len(data)
    assert cache.lookup(key_of(b"in"), verify="full") == entry


def test_concurrent_writers_of_one_key_never_corrupt_it(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight batches that all missed the key store at once: one sound entry, served whole."""
    cache = make_cache(place)
    key = key_of(b"input")
    results = [image_bytes(30 + i, 30) for i in range(8)]
    srcs = [place.put(f"results/r{i}.jpg", data) for i, data in enumerate(results)]
    monkeypatch.setattr(ResultCache, "lookup", lambda self, key, verify=None: None)  # all of them miss
    barrier = threading.Barrier(len(srcs))

    def store(i: int) -> None:
        barrier.wait()
        cache.store(key, srcs[i], job_id=f"job-{i}", credits=1, storage_options=place.options, now=FAR)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(len(srcs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    entry = cache.lookup(key, verify="full")
    assert entry is not None and entry.job_id is not None
    winner = results[int(entry.job_id.split("-")[1])]
    hit = cache.fetch(key, place.url("out/a.jpg"), place.options)
    assert hit is not None and place.cat(hit.output) == winner
    # the losers' blobs are orphans: pruned once old, the entry stays
    assert len(entry_files(place, key)) == 1 + len(srcs)
    pruned = cache.prune(DAY, now=FAR)
    assert pruned.entries == 0 and pruned.bytes == sum(map(len, results)) - len(winner)
    assert set(entry_files(place, key)) == {"record.json", entry.blob.rsplit("/", 1)[1]}
    assert cache.lookup(key, verify="full") == entry


def test_no_token_and_no_storage_secret_in_records_or_reprs(place: Place) -> None:
    token = "sk_live_cache_test_token_0123456789"
    Secret(token)  # known to the redactor, as the client makes it
    cache = make_cache(place)
    src = place.put("results/r.jpg", image_bytes(20, 20))
    key = cache_key(hashlib.sha256(b"in").hexdigest(), "open", "upscale", {"note": token})
    entry = cache.store(key, src, job_id="j", credits=1, storage_options=place.options)
    raw = place.fs.cat_file(entry_files(place, key)["record.json"])
    assert token.encode() not in raw and b"***" in raw
    assert token not in json.dumps(entry.record) and token not in repr(entry)
    secretive = ResultCache(place.url("c"), {**place.options, "secret": "hunter2-secret"})
    assert "hunter2" not in repr(secretive) and repr(secretive) == f"ResultCache({place.url('c')!r})"


# --- corrupt or partial entries ----------------------------------------------------------------------
def _rewrite(place: Place, path: str, data: bytes) -> None:
    if place.kind == "s3":
        place.fs.pipe(path, data)
    else:
        Path(path).write_bytes(data)


def test_truncated_entry_is_a_miss_removed_and_replaced(place: Place) -> None:
    cache = make_cache(place)
    result = image_bytes(60, 60)
    entry = stored(place, cache, result)
    key = key_of(b"input")
    blob = entry_files(place, key)[entry.blob.rsplit("/", 1)[1]]
    _rewrite(place, blob, result[: len(result) // 2])
    assert cache.fetch(key, place.url("out/a"), place.options) is None
    assert entry_files(place, key) == {}  # removed
    assert not place.exists(place.url("out/a.jpg"))  # nothing served
    fresh = stored(place, cache, result, job_id="job-2")  # the re-paid result replaces it
    assert fresh.job_id == "job-2"
    hit = cache.fetch(key, place.url("out/a"), place.options)
    assert hit is not None and place.cat(hit.output) == result


def test_altered_entry_of_the_same_size_is_never_served(place: Place) -> None:
    cache = make_cache(place)
    result = image_bytes(60, 60)
    entry = stored(place, cache, result)
    key = key_of(b"input")
    blob = entry_files(place, key)[entry.blob.rsplit("/", 1)[1]]
    altered = bytearray(result)
    altered[len(altered) // 2] ^= 0xFF
    _rewrite(place, blob, bytes(altered))
    if place.kind == "s3":
        assert cache.lookup(key) is None  # its ETag changed: found by a HEAD, no read
    else:
        assert cache.lookup(key) is not None  # size only (the default): looks sound ...
        assert cache.fetch(key, place.url("out/a"), place.options) is None  # ... the copy's hash is not
        assert not place.exists(place.url("out/a.jpg"))
    assert entry_files(place, key) == {}


def test_full_verification_finds_an_alteration_before_copying(tmp_path: Path) -> None:
    place = Place("local", str(tmp_path), {}, fsspec.filesystem("file"))
    cache = make_cache(place, verify="full")
    result = image_bytes(60, 60)
    entry = stored(place, cache, result)
    blob = Path(entry.blob)
    blob.write_bytes(result[:-1] + bytes([result[-1] ^ 1]))
    assert cache.lookup(key_of(b"input")) is None and not blob.exists()


@pytest.mark.parametrize("damage", ["truncated record", "not json", "other key", "blob gone", "bad size"])
def test_unsound_records_are_misses(place: Place, damage: str) -> None:
    cache = make_cache(place)
    entry = stored(place, cache, image_bytes(30, 30))
    key = key_of(b"input")
    files = entry_files(place, key)
    rec_path, raw = files["record.json"], place.fs.cat_file(files["record.json"])
    rec = json.loads(raw)
    if damage == "truncated record":
        _rewrite(place, rec_path, raw[: len(raw) // 2])
    elif damage == "not json":
        _rewrite(place, rec_path, b"\x00\x01garbage")
    elif damage == "other key":
        _rewrite(place, rec_path, json.dumps({**rec, "key": "0" * 64}).encode())
    elif damage == "blob gone":
        place.fs.rm(files[entry.blob.rsplit("/", 1)[1]])
    else:
        _rewrite(place, rec_path, json.dumps({**rec, "size": "12"}).encode())
    assert cache.fetch(key, place.url("out/a"), place.options) is None
    assert "record.json" not in entry_files(place, key)


def test_a_blob_without_its_record_is_a_miss_and_pruned_when_old(place: Place) -> None:
    """A store killed after the result and before the record: invisible, then swept away."""
    cache = make_cache(place)
    key = key_of(b"input")
    d = key.digest
    place.put(f"vance-cache/v1/objects/{d[:2]}/{d}/0123456789ab.jpg", image_bytes(20, 20))
    assert cache.lookup(key) is None and cache.stats().entries == 0
    (info,) = cache._find("objects").values()
    mtime = info.get("mtime") or info["LastModified"].timestamp()
    assert cache.prune(DAY, now=mtime + 1).bytes == 0  # young: a store may be writing its record
    result = cache.prune(DAY, now=FAR)
    assert (result.entries, result.bytes > 0) == (0, True)
    assert entry_files(place, key) == {}


# --- prune and stats ---------------------------------------------------------------------------------
def test_prune_by_last_use_and_stats_keep_the_credits_saved(place: Place) -> None:
    cache = make_cache(place)
    srcs = {n: place.put(f"results/{n}.jpg", image_bytes(20 + i, 20)) for i, n in enumerate("abc")}
    keys = {n: key_of(n.encode()) for n in srcs}
    for n, src in srcs.items():  # all made 100 days before T0
        cache.store(keys[n], src, job_id=n, credits=1.5, storage_options=place.options, now=T0 - 100 * DAY)
    # a: hit yesterday (in use); b: hit 95 days ago; c: never hit
    assert cache.fetch(keys["a"], place.url("o/a"), place.options, now=T0 - DAY) is not None
    assert cache.fetch(keys["b"], place.url("o/b"), place.options, now=T0 - 95 * DAY) is not None
    before = cache.stats()
    assert (before.entries, before.hits, before.credits_saved) == (3, 2, 3.0)

    dry = cache.prune(90 * DAY, now=T0, dry_run=True)
    assert (dry.entries, dry.hits_folded, dry.dry_run) == (2, 1, True)
    assert cache.stats() == before

    done = cache.prune(90 * DAY, now=T0)
    assert (done.entries, done.hits_folded) == (2, 1) and done.bytes == dry.bytes > 0
    after = cache.stats()
    assert (after.entries, after.hits, after.credits_saved) == (1, 2, 3.0)  # saved credits stay counted
    assert after.bytes < before.bytes
    assert cache.lookup(keys["a"]) is not None
    assert cache.lookup(keys["b"]) is None and cache.lookup(keys["c"]) is None
    assert cache.prune(90 * DAY, now=T0) == type(done)(0, 0, 0, False)  # nothing more to do

    everything = cache.prune(0, now=T0 + 1)
    assert everything.entries == 1 and cache.stats().as_dict() == {
        "entries": 0,
        "bytes": 0,
        "hits": 2,
        "credits_saved": 3.0,
    }
    with pytest.raises(InvalidConfigError):
        cache.prune(-1)


def test_a_prune_cut_short_never_counts_a_hit_twice(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(place)
    stored(place, cache, image_bytes(20, 20), now=T0 - 10 * DAY)
    for i in range(3):
        assert cache.fetch(key_of(b"input"), place.url(f"o/{i}"), place.options, now=T0 - 5 * DAY) is not None
    real_rm = ResultCache._rm

    def rm_nothing_after_the_ledger(self: ResultCache, paths: list[str]) -> None:
        if any(p.endswith(".hit") for p in paths):
            raise KeyboardInterrupt  # killed between the ledger and the markers' removal
        real_rm(self, paths)

    monkeypatch.setattr(ResultCache, "_rm", rm_nothing_after_the_ledger)
    with pytest.raises(KeyboardInterrupt):
        cache.prune(DAY, now=T0)
    monkeypatch.undo()
    stats = cache.stats()
    assert (stats.hits, stats.credits_saved) == (3, 6.0)
    cache.prune(DAY, now=T0)  # the rerun folds them again, and removes them
    assert (cache.stats().hits, cache.stats().credits_saved) == (3, 6.0)


def test_remove(place: Place) -> None:
    cache = make_cache(place)
    stored(place, cache, image_bytes(20, 20))
    cache.remove(key_of(b"input"))
    cache.remove(key_of(b"input"))  # twice: no error
    assert cache.lookup(key_of(b"input")) is None and entry_files(place, key_of(b"input")) == {}


def test_a_result_gone_between_lookup_and_copy_is_a_miss(place: Place) -> None:
    """Pruned (or deleted) while a batch was about to copy it: a miss, nothing written."""
    cache = make_cache(place)
    stored(place, cache, image_bytes(20, 20))
    key = key_of(b"input")
    entry = cache.lookup(key)
    assert entry is not None
    place.fs.rm(entry_files(place, key)[entry.blob.rsplit("/", 1)[1]])
    with pytest.raises(CacheCorruptError):
        cache.copy_to(entry, place.url("out/a"), place.options)
    assert not place.exists(place.url("out/a.jpg"))
    assert entry_files(place, key) == {} and cache.stats().hits == 0


def test_a_destination_failure_keeps_the_entry(s3: tuple[Any, dict[str, Any], str]) -> None:
    fs, options, bucket = s3
    place = Place("s3", f"s3://{bucket}", options, fs)
    cache = make_cache(place)
    stored(place, cache, image_bytes(20, 20))
    with pytest.raises(OSError):
        cache.fetch(key_of(b"input"), f"s3://{bucket}-missing-bucket/out/a", options)
    assert cache.lookup(key_of(b"input"), verify="full") is not None
