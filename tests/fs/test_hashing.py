"""Building manifests from directories: hashing and path attacks on real files."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from custos.core.manifest import ManifestError
from custos.errors import InvalidInput
from custos.fs.hashing import build_manifest, hash_file


def make_tree(root, files: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_manifest_matches_hashlib(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {"a.safetensors": os.urandom(3_000_001), "sub/b.bin": os.urandom(10),
             "sub/deeper/c.json": b"{}", "empty": b""}
    make_tree(tmp_path, files)
    m = build_manifest(tmp_path, workers=2)
    assert {f.path: (f.size, f.sha256) for f in m.files} == {
        k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in files.items()}
    assert build_manifest(tmp_path, workers=1).artifact_id == m.artifact_id


def test_symlink_inside_tree_is_followed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, {"real.bin": b"abc"})
    (tmp_path / "alias.bin").symlink_to("real.bin")
    m = build_manifest(tmp_path)
    assert [f.path for f in m.files] == ["alias.bin", "real.bin"]
    assert m.files[0].sha256 == m.files[1].sha256


def test_symlink_leaving_tree_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    root = tmp_path / "art"
    make_tree(root, {"w.bin": b"x"})
    (root / "escape.bin").symlink_to(outside)
    with pytest.raises(ManifestError, match="leaves"):
        build_manifest(root)


def test_symlink_dotdot_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "art"
    make_tree(root, {"w.bin": b"x"})
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root")
    (root / "p").symlink_to("../etc/passwd")
    with pytest.raises(ManifestError, match="leaves"):
        build_manifest(root)


def test_symlinked_directory_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, {"d/w.bin": b"x"})
    (tmp_path / "loop").symlink_to(".")
    with pytest.raises(ManifestError, match="non-regular"):
        build_manifest(tmp_path)


def test_dangling_symlink_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, {"w.bin": b"x"})
    (tmp_path / "gone").symlink_to("nothing-here")
    with pytest.raises(ManifestError):
        build_manifest(tmp_path)


def test_fifo_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, {"w.bin": b"x"})
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ManifestError, match="special file"):
        build_manifest(tmp_path)


def test_socket_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, {"w.bin": b"x"})
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    try:
        with pytest.raises(ManifestError, match="special file"):
            build_manifest(tmp_path)
    finally:
        s.close()


def test_device_file_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, {"w.bin": b"x"})
    try:
        os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        # Without CAP_MKNOD, a symlink to a device inside the tree is the same attack.
        (tmp_path / "null").symlink_to("/dev/null")
    with pytest.raises(ManifestError):
        build_manifest(tmp_path)


def test_unreadable_and_missing_dirs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        build_manifest(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="not a directory"):
        build_manifest(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no files"):
        build_manifest(tmp_path / "empty")


def test_hash_file_refuses_symlink_and_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "t").write_bytes(b"x")
    (tmp_path / "l").symlink_to("t")
    with pytest.raises(InvalidInput):
        hash_file(str(tmp_path / "l"))
    with pytest.raises(InvalidInput):
        hash_file(str(tmp_path / "nope"))
