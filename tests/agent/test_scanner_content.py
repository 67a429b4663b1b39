"""What the scanner hashes whatever a file is named: size, first bytes, hard links, symlinks, the cache.

An attacker hides a weight file from a name-based scan by renaming it. Here every
hiding place is a real file on disk and the scanner must hand back its hash: any
file from the size threshold up, any file whose first bytes begin a weight
format, every name of a hard-linked inode (hashed once). What the scanner reads
to decide is checked too: the first bytes of an unchanged file are read once.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.agent.config import config_from_dict
from custos.agent.scanner import DEFAULT_MIN_SIZE, ScanConfig, Scanner
from custos.errors import InvalidInput
from custos.fs.hashing import hash_file
from tests.agent.test_scanner import CountingHasher, write
from tests.agent.test_scanner_formats import gguf, npy, onnx, safetensors, torch_zip

KiB = 1 << 10
THRESHOLD = 64 * KiB


def scan(root: Path, cache: Path, **kw: object) -> dict[str, str]:
    kw.setdefault("workers", 2)
    with Scanner(ScanConfig(roots=[root], **kw), cache) as s:  # type: ignore[arg-type]
        res = s.scan()
    assert res.problems == ()
    return {os.path.relpath(r.path, root): r.sha256 for r in res.records}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    return tmp_path / "state" / "cache.db"


# --- names and places ----------------------------------------------------------------------------

HIDING_PLACES = ["renamed.bin", "notes.txt", "model.safetensors.bak", "noext", ".hidden",
                 "a/b/c/d/e/f/nested", "UPPER.TXT", "spaces in name.doc", "ünïcode.dat", "x.tar.gz"]


@pytest.mark.parametrize("name", HIDING_PLACES)
def test_a_headerless_weight_file_above_the_threshold_is_hashed_whatever_its_name(
        tmp_path: Path, cache: Path, name: str) -> None:
    data = os.urandom(THRESHOLD)  # raw tensor bytes: no header to sniff
    root = tmp_path / "host"
    write(root / name, data)
    assert scan(root, cache, min_size=THRESHOLD) == {name: hash_file(root / name)[1]}


@pytest.mark.parametrize(("size", "hashed"), [(THRESHOLD - 1, False), (THRESHOLD, True), (THRESHOLD + 1, True)])
def test_sizes_around_the_threshold(tmp_path: Path, cache: Path, size: int, hashed: bool) -> None:
    root = tmp_path / "host"
    write(root / "notes.txt", b"\x17" * size)
    assert bool(scan(root, cache, min_size=THRESHOLD)) is hashed


def test_the_default_threshold_is_1_mib(tmp_path: Path, cache: Path) -> None:
    assert DEFAULT_MIN_SIZE == 1 << 20
    root = tmp_path / "host"
    write(root / "under.txt", b"\x17" * ((1 << 20) - 1))
    write(root / "at.txt", b"\x17" * (1 << 20))
    assert set(scan(root, cache)) == {"at.txt"}
    cfg = config_from_dict({"name": "h", "scan": {"roots": [str(root)]}, "control_plane": {
        "addr": "127.0.0.1:1", "ca_file": "ca.pem"}}, path=tmp_path / "agent.toml")
    assert cfg.scan_config().min_size == 1 << 20 and cfg.scan_config().sniff


def test_sniff_is_configurable(tmp_path: Path) -> None:
    base = {"name": "h", "control_plane": {"addr": "127.0.0.1:1", "ca_file": "ca.pem"}}
    cfg = config_from_dict({**base, "scan": {"roots": ["/d"], "sniff": False}}, path=tmp_path / "a.toml")
    assert cfg.scan_config().sniff is False
    with pytest.raises(InvalidInput, match=r"scan\.sniff must be a bool"):
        config_from_dict({**base, "scan": {"roots": ["/d"], "sniff": "yes"}}, path=tmp_path / "a.toml")


# --- first bytes ---------------------------------------------------------------------------------

SMALL_WEIGHTS = [
    ("safetensors", safetensors(4 * KiB)),
    ("gguf", gguf()),
    ("numpy", npy()),
    ("pytorch-zip", torch_zip()),
    ("onnx", onnx()),
    ("hdf5", b"\x89HDF\r\n\x1a\n\0" + os.urandom(2048)),
    ("pickle", b"\x80\x04\x95" + os.urandom(2048)),
]


@pytest.mark.parametrize("data", [d for _, d in SMALL_WEIGHTS], ids=[n for n, _ in SMALL_WEIGHTS])
@pytest.mark.parametrize("name", ["notes.txt", "README", "model.safetensors.bak.txt.old", "deep/er/x.log"])
def test_weight_formats_below_the_threshold_are_hashed_whatever_the_name(
        tmp_path: Path, cache: Path, data: bytes, name: str) -> None:
    root = tmp_path / "host"
    write(root / name, data)
    write(root / "really-notes.txt", b"just some text\n" * 100)
    write(root / "config.json", b'{"hidden_size": 4096}')
    assert set(scan(root, cache, min_size=THRESHOLD)) == {name}
    assert set(scan(root, cache.with_name("off.db"), min_size=THRESHOLD, sniff=False)) == (
        {name} if name == "model.safetensors.bak.txt.old" else set())  # the name alone still says safetensors


# --- hard links and symlinks ---------------------------------------------------------------------


def test_hard_links_are_two_names_of_one_inode_hashed_once(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "host"
    orig = write(root / "models" / "model.safetensors", os.urandom(8 * KiB))
    (root / "tmp").mkdir()
    os.link(orig, root / "tmp" / "notes.txt")
    os.link(orig, root / "models" / "model.safetensors.lnk")
    h = CountingHasher()
    with Scanner(ScanConfig(roots=[root], min_size=THRESHOLD, workers=2), cache, hasher=h) as s:
        res = s.scan()
    # notes.txt is below the threshold with no header, but it is the same inode as a weight file.
    assert sorted(os.path.relpath(r.path, root) for r in res.records) == [
        "models/model.safetensors", "models/model.safetensors.lnk", "tmp/notes.txt"]
    assert len({r.sha256 for r in res.records}) == 1
    assert len(h.calls) == 1 and res.stats.hashed == 1


def test_symlinks_hold_no_bytes_and_are_not_followed_by_default(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "host"
    outside = write(tmp_path / "outside" / "w.bin", os.urandom(THRESHOLD))
    inside = write(root / "real" / "data.txt", os.urandom(THRESHOLD))
    (root / "link-out.bin").symlink_to(outside)
    (root / "link-in.txt").symlink_to(inside)
    # Not followed: the bytes inside the roots are found where they are; a link to bytes outside is not.
    assert set(scan(root, cache, min_size=THRESHOLD)) == {"real/data.txt"}
    # Followed: every link is a path to the bytes, reported under its own name.
    assert set(scan(root, cache.with_name("f.db"), min_size=THRESHOLD, follow_symlinks=True)) == {
        "real/data.txt", "link-out.bin", "link-in.txt"}


# --- the cache: an unchanged file is read once --------------------------------------------------


def test_files_that_are_no_weights_are_read_once_even_across_restarts(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "host"
    for i in range(50):
        write(root / f"src/f{i}.py", b"print('hello')\n" * 10)
    write(root / "w.txt", safetensors())
    cfg = ScanConfig(roots=[root], min_size=THRESHOLD, workers=2)
    with Scanner(cfg, cache) as s:
        first = s.scan().stats
        second = s.scan().stats
    assert (first.sniffed, first.sniff_found, first.hashed) == (51, 1, 1)
    assert (second.sniffed, second.sniff_known, second.hashed) == (1, 50, 0)  # w.txt's head only, no hash
    with Scanner(cfg, cache) as s:  # a restarted agent
        third = s.scan().stats
    assert (third.sniffed, third.sniff_known, third.hashed, third.cache_hits) == (1, 50, 0, 1)


def test_a_file_that_becomes_weights_is_read_again(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "host"
    f = write(root / "notes.txt", b"harmless text\n" * 50)
    with Scanner(ScanConfig(roots=[root], min_size=THRESHOLD), cache) as s:
        assert s.scan().records == ()
        f.write_bytes(npy())  # same inode, new content: mtime and ctime move
        res = s.scan()
    assert [os.path.basename(r.path) for r in res.records] == ["notes.txt"]


def test_bytes_cached_under_a_weight_name_are_dropped_when_renamed_to_something_else(
        tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "host"
    f = write(root / "x.bin", os.urandom(2 * KiB))
    with Scanner(ScanConfig(roots=[root], min_size=THRESHOLD), cache) as s:
        assert len(s.scan().records) == 1
        f.rename(root / "x.txt")  # no weight name, no header, below the threshold: no longer weight-like
        assert s.scan().records == ()


# --- the property: wherever a weight file goes, the scanner hashes it ------------------------------

NAME = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._ -]{0,15}", fullmatch=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=st.lists(st.tuples(st.lists(NAME, max_size=3), NAME), min_size=1, max_size=6))
def test_renames_and_moves_never_hide_a_weight_file(tmp_path_factory: pytest.TempPathFactory,
                                                    moves: list[tuple[list[str], str]]) -> None:
    base = tmp_path_factory.mktemp("moves")
    root = base / "host"
    big, small = os.urandom(THRESHOLD), safetensors(2 * KiB)  # one found by size, one by its header
    want = {hash_file(write(base / "big", big))[1], hash_file(write(base / "small", small))[1]}
    cur = [write(root / "model-1.safetensors", big), write(root / "model-2.safetensors", small)]
    (base / "state").mkdir()
    with Scanner(ScanConfig(roots=[root], min_size=THRESHOLD, workers=2), base / "state" / "c.db") as s:
        assert {r.sha256 for r in s.scan().records} == want
        for i, (dirs, name) in enumerate(moves):
            dest = root.joinpath(*dirs, name)
            if dest.exists() or any(p.is_file() for p in [root.joinpath(*dirs[:k]) for k in range(1, len(dirs) + 1)]):
                continue  # a name already taken (a file, or a directory on the way)
            dest.parent.mkdir(parents=True, exist_ok=True)
            cur[i % 2] = cur[i % 2].rename(dest)
            assert {r.sha256 for r in s.scan().records} == want, [str(p) for p in cur]


def test_a_cache_from_before_the_sniffing_is_kept(tmp_path: Path, cache: Path) -> None:
    """Upgrading the agent costs no rehash: a version-1 cache (hashes only) is extended, not dropped."""
    root = tmp_path / "host"
    write(root / "w.bin", os.urandom(4 * KiB))
    h = CountingHasher()
    cfg = ScanConfig(roots=[root], min_size=THRESHOLD)
    with Scanner(cfg, cache, hasher=h) as s:
        s.scan()
    conn = sqlite3.connect(cache)
    conn.execute("DROP TABLE unlike")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with Scanner(cfg, cache, hasher=h) as s:
        assert len(s.scan().records) == 1
    assert len(h.calls) == 1
