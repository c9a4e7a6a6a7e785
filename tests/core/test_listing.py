"""The listing and the outputs-apart check take short cuts for plain local paths: they must give
what the general path gives."""

from __future__ import annotations

import os
from pathlib import Path

from vance_provider.core.state.storage import Locations, list_sources, location


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
