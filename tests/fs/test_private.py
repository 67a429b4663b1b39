"""The one private-file writer: mode from creation, atomic, never clobbers when exclusive, no debris."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from custos.errors import FailedPrecondition
from custos.fs.private import private_dir, write_private


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_private(tmp_path / "key", b"secret")
        write_private(tmp_path / "cert.pem", b"public", mode=0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "key") == 0o600
    assert _mode(tmp_path / "cert.pem") == 0o644
    assert (tmp_path / "key").read_bytes() == b"secret"


def test_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    for i in range(5):
        write_private(target, bytearray(f"v{i}".encode()))
    assert target.read_bytes() == b"v4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_replaced_file_gets_the_new_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    os.chmod(target, 0o666)  # noqa: S103 - the wide mode the writer must narrow
    write_private(target, memoryview(b"new"))
    assert _mode(target) == 0o600 and target.read_bytes() == b"new"


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "signer.key"
    write_private(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_private(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signer.key"]


def test_a_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    link = tmp_path / "key"
    link.symlink_to(victim)
    write_private(link, b"secret")
    assert victim.read_bytes() == b"do not touch"
    assert not link.is_symlink() and link.read_bytes() == b"secret"
    with pytest.raises(FileExistsError):  # exclusive: a symlink counts as existing
        (tmp_path / "k2").symlink_to(victim)
        write_private(tmp_path / "k2", b"x", exclusive=True)
    assert victim.read_bytes() == b"do not touch"


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_private(target, b"kept")
    with pytest.raises(TypeError):
        write_private(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_missing_directory_is_an_error_not_a_mkdir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_private(tmp_path / "nope" / "f", b"x")


def test_private_dir_creates_0700_and_tightens(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "a" / "b")
    assert _mode(d) == 0o700
    os.chmod(d, 0o755)  # noqa: S103 - the wide mode private_dir must narrow
    private_dir(d)
    assert _mode(d) == 0o700
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        private_dir(f)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_private_dir_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 65534, 65534)
    with pytest.raises(FailedPrecondition, match="owned by uid 65534"):
        private_dir(d)
