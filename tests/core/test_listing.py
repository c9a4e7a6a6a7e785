"""The listing and the outputs-apart check take short cuts for plain local paths: they must give
what the general path gives."""

from __future__ import annotations

import os
from pathlib import Path

from vance_provider.core.api.errors import ConfigurationError
from vance_provider.core.state.storage import (
    MEDIA_EXTENSIONS,
    Locations,
    check_outputs_apart,
    list_sources,
    location,
    suffix_of,
    without_suffix,
)


def test_a_walked_folder_lists_as_a_glob_of_it_does(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("a.jpg", "B.PNG", "sub/c.webp", ".hidden.jpg", "notes.txt", "_vance_manifest.json"):
        (src / name).write_bytes(b"x" * len(name))
    os.utime(src / "a.jpg", (0, 0))  # an mtime of 0: the fingerprint falls back to the ctime
    (src / "link.jpg").symlink_to(src / "a.jpg")
    (src / "folder-link").symlink_to(src / "sub")
    walked_ignored: list[tuple[str, str]] = []
    walked = list_sources(str(src), None, None, walked_ignored)
    globbed = list_sources([str(src / "*"), str(src / "sub" / "*")], None, None, [])
    assert [s.url for s in walked] == sorted(
        str(src / n) for n in ("a.jpg", "B.PNG", "link.jpg", "sub/c.webp")
    )
    by_url = {s.url: s for s in globbed}
    for s in walked:
        assert (s.size, s.fingerprint) == (by_url[s.url].size, by_url[s.url].fingerprint), s.url
    assert sorted(walked_ignored) == sorted(
        [
            (str(src / ".hidden.jpg"), "hidden file"),
            (str(src / "notes.txt"), "not an image or video (by its extension)"),
            (
                str(src / "folder-link"),
                f"a symbolic link to the folder {src / 'sub'}: links to folders are not followed "
                "(give that folder as a source of its own)",
            ),
        ]
    )


def test_locations_resolve_as_location_does(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    (real / "a.jpg").write_bytes(b"a")
    (real / "to-a.jpg").symlink_to(real / "a.jpg")
    urls = []
    for folder in (real, tmp_path / "alias"):
        for name in ("a.jpg", "to-a.jpg", ".a.jpg", "b.png", ".", ".."):
            urls += [f"{folder}/{name}", f"{folder}//{name}", f"{folder}/./{name}", f"file://{folder}/{name}"]
    urls += [f"{tmp_path}/missing/x.jpg", "/", "/x.jpg"]
    many = Locations()
    for url in urls + urls:  # the second time, from what was learnt about each folder
        assert many(url) == location(url), url


def test_outputs_apart_refuses_what_location_finds(tmp_path: Path) -> None:
    """The outputs-apart check skips the outputs of a plain folder where no input is: an output
    that lands on an input through a link, a linked folder or the inputs' own folder is still
    refused, as located one by one (``location``) finds it."""
    src, dest = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    dest.mkdir()
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        (src / name).write_bytes(b"x")
    (dest / "to-a.jpg").symlink_to(src / "a.jpg")
    (dest / "alias").symlink_to(src)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "to-b.png").symlink_to(src / "b.png")
    inputs = [str(src / n) for n in ("a.jpg", "b.png", "sub/c.jpg")]

    def lands_on_an_input(outputs: list[str]) -> bool:
        found = {location(u) for u in inputs}
        for out in outputs:
            proto, path = location(out)
            if suffix_of(path) in MEDIA_EXTENSIONS:
                if (proto, path) in found:
                    return True
            elif any(p == proto and without_suffix(x) == path for p, x in found):
                return True
        return False

    safe = [f"{dest}/x{i}" for i in range(len(inputs) - 1)]  # most outputs: a plain folder, no input
    for out in [
        f"{dest}/a",
        f"{dest}/to-a.jpg",
        f"{dest}/to-a",
        f"{dest}/alias/a",
        f"{dest}/alias/a.png",
        f"{dest}/alias/sub/c",
        f"{dest}/new/a",
        f"{src}/a",
        f"{src}/a.png",
        f"{src}/sub/c.webp",
        f"{src}/sub/../b",
        f"{tmp_path}/links/to-b.png",
        f"{tmp_path}/links/to-b",
        f"file://{src}/a",
        f"{dest}/.a.jpg",
    ]:
        planned = dict(zip(inputs, [*safe, out], strict=True))
        expected = lands_on_an_input(list(planned.values()))
        try:
            check_outputs_apart(planned)
            refused = False
        except ConfigurationError:
            refused = True
        assert refused == expected, out
