"""The inventory scanner on real files: hashing, the cache, bad files, watching."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from custos.agent.scanner import (
    CUSTOS_MAGIC,
    ScanConfig,
    Scanner,
    ScanResult,
    Watcher,
    lower_thread_priority,
)
from custos.core.chunked import MAGIC
from custos.errors import FailedPrecondition, InvalidInput
from custos.fs.hashing import hash_file

NOBODY = 65534


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CountingHasher:
    """hash_file, counting calls per path; ``before`` runs just before each hash."""

    def __init__(self, before: Callable[[str], None] | None = None) -> None:
        self.calls: list[str] = []
        self.before = before
        self._lock = threading.Lock()

    def __call__(self, path: str) -> tuple[int, str]:
        with self._lock:
            self.calls.append(path)
        if self.before is not None:
            self.before(path)
        return hash_file(path)


def config(*roots: Path, **kw: object) -> ScanConfig:
    kw.setdefault("workers", 2)
    kw.setdefault("min_size", 0)
    return ScanConfig(roots=list(roots), **kw)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write(root / "model" / "a.safetensors", b"A" * 5000)
    write(root / "model" / "b.bin", b"B" * 3000)
    write(root / "model" / "config.json", b"{}")
    write(root / "other" / "x.gguf", b"X" * 100)
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "state" / "scan-cache.db"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()


def paths(result: ScanResult) -> set[str]:
    return {r.path for r in result.records}


def run_unprivileged(fn: Callable[[], object]) -> object:
    """Run ``fn`` as a user without privileges: forked and setuid nobody when we are root.

    Tests run as root, where chmod 000 stops nothing; dropping to nobody makes
    permission checks real. Returns fn's JSON-able result; raises on failure.
    """
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = json.dumps({"ok": fn()}).encode()
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            out = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
        finally:
            with os.fdopen(w, "wb") as f:
                f.write(out)
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    got = json.loads(data)
    if "error" in got:
        raise AssertionError(f"unprivileged child failed: {got['error']}")
    return got["ok"]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory others may traverse (pytest's tmp_path is 0700 to root)."""
    d = Path(tempfile.mkdtemp(prefix="custos-scan-"))
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"roots": []},
        {"roots": "/data"},
        {"roots": ["/d"], "workers": 0},
        {"roots": ["/d"], "min_size": -1},
        {"roots": ["/d"], "patterns": ".bin"},
        {"roots": ["/d"], "patterns": (".",)},
        {"roots": ["/d"], "exclude": "*.tmp"},
        {"roots": ["/d"], "exclude": [""]},
        {"roots": ["/d"], "magic": b""},
    ],
)
def test_bad_config_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        ScanConfig(**kwargs)  # type: ignore[arg-type]


def test_magic_matches_the_chunked_format() -> None:
    assert CUSTOS_MAGIC == MAGIC


# --- scanning -----------------------------------------------------------------------------------


def test_scan_hashes_weight_like_files(tree: Path, cache: Path) -> None:
    with Scanner(config(tree), cache) as s:
        res = s.scan()
    got = {r.path: r for r in res.records}
    assert set(got) == {
        str(tree / "model" / "a.safetensors"),
        str(tree / "model" / "b.bin"),
        str(tree / "other" / "x.gguf"),
    }
    a = got[str(tree / "model" / "a.safetensors")]
    st = os.stat(a.path)
    assert (a.size, a.sha256, a.form) == (5000, sha(b"A" * 5000), "plaintext")
    assert (a.device, a.inode, a.mtime_ns, a.ctime_ns) == (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    assert res.problems == ()
    assert res.stats.hashed == 3 and res.stats.cache_hits == 0 and res.stats.files_seen == 4


def test_size_threshold(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "d"
    write(root / "big.dat", b"\0" * 4096)
    write(root / "small.dat", b"\0" * 4095)
    write(root / "tiny.pt", b"\1")
    with Scanner(config(root, min_size=4096), cache) as s:
        assert paths(s.scan()) == {str(root / "big.dat"), str(root / "tiny.pt")}
    with Scanner(config(root, min_size=0), cache) as s:
        assert paths(s.scan()) == {str(root / "tiny.pt")}  # 0 disables the size rule


def test_suffix_is_case_insensitive_and_configurable(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "d"
    write(root / "W.SAFETENSORS", b"1")
    write(root / "w.weights", b"2")
    with Scanner(config(root, patterns=("weights",)), cache) as s:
        assert paths(s.scan()) == {str(root / "w.weights")}
    with Scanner(config(root), cache) as s:
        assert paths(s.scan()) == {str(root / "W.SAFETENSORS")}


def test_excluded_globs(tree: Path, cache: Path) -> None:
    write(tree / "model" / ".git" / "lfs.bin", b"lfs")
    cfg = config(tree, exclude=["*/other", ".git", "*.bin"])
    with Scanner(cfg, cache) as s:
        assert paths(s.scan()) == {str(tree / "model" / "a.safetensors")}


def test_ciphertext_form_detected(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "d"
    write(root / "enc.safetensors", CUSTOS_MAGIC + os.urandom(100))
    write(root / "short.bin", CUSTOS_MAGIC[:3])
    write(root / "plain.bin", b"\0" * 100)
    write(root / "alt.bin", b"CSTS" + b"\0" * 10)
    with Scanner(config(root), cache) as s:
        forms = {Path(r.path).name: r.form for r in s.scan().records}
    assert forms == {
        "enc.safetensors": "ciphertext",
        "short.bin": "plaintext",
        "plain.bin": "plaintext",
        "alt.bin": "plaintext",
    }
    with Scanner(config(root, magic=b"CSTS"), tmp_path / "state" / "other.db") as s:
        forms = {Path(r.path).name: r.form for r in s.scan().records}
    assert forms["alt.bin"] == "ciphertext" and forms["enc.safetensors"] == "plaintext"


def test_special_files_are_skipped(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    os.mkfifo(root / "pipe.bin")  # opening it would block the scan
    write(root / "w.bin", b"w")
    with Scanner(config(root, min_size=1), cache) as s:
        res = s.scan()
    assert paths(res) == {str(root / "w.bin")} and res.problems == ()


def test_overlapping_roots_are_walked_once(tree: Path, cache: Path) -> None:
    with Scanner(config(tree, tree / "model"), cache) as s:
        res = s.scan()
    assert len(res.records) == 3 == len(paths(res))


# --- the cache ----------------------------------------------------------------------------------


def test_cache_hit_means_no_rehash_even_across_restarts(tree: Path, cache: Path) -> None:
    h = CountingHasher()
    with Scanner(config(tree), cache, hasher=h) as s:
        first = s.scan()
        assert len(h.calls) == 3
        second = s.scan()
        assert len(h.calls) == 3 and second.stats.cache_hits == 3 and second.stats.hashed == 0
    with Scanner(config(tree), cache, hasher=h) as s:  # a restarted agent
        third = s.scan()
    assert len(h.calls) == 3
    assert first.records == second.records == third.records


def test_cache_file_is_private(tree: Path, cache: Path) -> None:
    with Scanner(config(tree), cache) as s:
        s.scan()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


def test_cache_with_loose_mode_is_tightened(tree: Path, cache: Path) -> None:
    cache.write_bytes(b"")
    cache.chmod(0o666)
    Scanner(config(tree), cache).close()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


def test_cache_owned_by_someone_else_is_refused(tree: Path, cache: Path) -> None:
    cache.write_bytes(b"")
    if os.geteuid() == 0:
        os.chown(cache, NOBODY, NOBODY)
        with pytest.raises(FailedPrecondition, match="owned by uid"):
            Scanner(config(tree), cache)
    else:  # pragma: no cover - non-root: the cache we just wrote is ours
        Scanner(config(tree), cache).close()


def test_cache_symlink_is_refused(tree: Path, cache: Path, tmp_path: Path) -> None:
    cache.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(FailedPrecondition, match="cannot open scan cache"):
        Scanner(config(tree), cache)


def test_corrupt_cache_is_rebuilt(tree: Path, cache: Path) -> None:
    cache.write_bytes(b"this is not a database" * 100)
    cache.chmod(0o600)
    h = CountingHasher()
    with Scanner(config(tree), cache, hasher=h) as s:
        assert len(s.scan().records) == 3
    with Scanner(config(tree), cache, hasher=h) as s:
        s.scan()
    assert len(h.calls) == 3


def test_cache_with_damaged_pages_is_rebuilt(tree: Path, cache: Path) -> None:
    h = CountingHasher()
    with Scanner(config(tree), cache, hasher=h) as s:
        s.scan()
    data = bytearray(cache.read_bytes())
    assert len(data) > 4096
    data[4096:] = b"\xa5" * (len(data) - 4096)  # schema page intact, the table pages garbage
    cache.write_bytes(bytes(data))
    with Scanner(config(tree), cache, hasher=h) as s:
        res = s.scan()
    assert len(res.records) == 3 and len(h.calls) == 6
    with Scanner(config(tree), cache, hasher=h) as s:
        s.scan()
    assert len(h.calls) == 6  # the rebuilt cache works


@pytest.mark.parametrize("change", ["mtime", "size", "inode", "content_same_size"])
def test_changed_file_is_rehashed(tree: Path, cache: Path, change: str) -> None:
    target = tree / "model" / "b.bin"
    h = CountingHasher()
    with Scanner(config(tree), cache, hasher=h) as s:
        s.scan()
        h.calls.clear()
        st = target.stat()
        if change == "mtime":
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            expect = b"B" * 3000
        elif change == "size":
            with open(target, "ab") as f:
                f.write(b"more")
            expect = b"B" * 3000 + b"more"
        elif change == "inode":
            tmp = tree / "model" / "b.bin.new"
            tmp.write_bytes(b"C" * 3000)
            os.replace(tmp, target)
            assert target.stat().st_ino != st.st_ino
            expect = b"C" * 3000
        else:
            # Same size, mtime put back: ctime still moves, so the key changes.
            target.write_bytes(b"D" * 3000)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            expect = b"D" * 3000
        res = s.scan()
    assert h.calls == [str(target)]
    assert res.by_path()[str(target)].sha256 == sha(expect)


def test_deleted_file_is_pruned_from_inventory_and_cache(tree: Path, cache: Path) -> None:
    with Scanner(config(tree), cache) as s:
        s.scan()
        (tree / "other" / "x.gguf").unlink()
        res = s.scan()
    assert str(tree / "other" / "x.gguf") not in paths(res)
    db = sqlite3.connect(cache)
    rows = {r[0] for r in db.execute("SELECT path FROM hashes")}
    db.close()
    assert rows == {str(tree / "model" / "a.safetensors"), str(tree / "model" / "b.bin")}


def test_unreadable_subtree_keeps_its_cache(tmp_path: Path, cache: Path) -> None:
    """A root that disappears (an unmounted disk) must not cost a full rehash when it is back."""
    root = tmp_path / "d"
    write(root / "w.bin", b"w")
    h = CountingHasher()
    with Scanner(config(root), cache, hasher=h) as s:
        s.scan()
        root.rename(tmp_path / "d.away")
        res = s.scan()
        assert res.records == () and [p.kind for p in res.problems] == ["missing"]
        (tmp_path / "d.away").rename(root)
        res = s.scan()
    assert paths(res) == {str(root / "w.bin")} and len(h.calls) == 1


# --- bad files and directories ------------------------------------------------------------------


def test_missing_root_is_a_problem_and_the_scan_goes_on(tree: Path, tmp_path: Path, cache: Path) -> None:
    gone = tmp_path / "no-such-dir"
    with Scanner(config(gone, tree), cache) as s:
        res = s.scan()
    assert len(res.records) == 3
    assert [(p.path, p.kind) for p in res.problems] == [(str(gone), "missing")]
    assert "does not exist" in res.problems[0].message


def test_root_that_is_a_file_is_a_problem(tree: Path, cache: Path) -> None:
    with Scanner(config(tree / "model" / "b.bin", tree / "other"), cache) as s:
        res = s.scan()
    assert paths(res) == {str(tree / "other" / "x.gguf")}
    assert "not a directory" in res.problems[0].message


def test_unreadable_directory_and_root(shared_tmp: Path) -> None:
    root = shared_tmp / "data"
    write(root / "ok" / "w.bin", b"ok")
    write(root / "locked" / "hidden.bin", b"hidden")
    (root / "ok" / "w.bin").chmod(0o644)
    (root / "ok").chmod(0o755)
    root.chmod(0o755)
    (root / "locked").chmod(0o000)
    locked_root = shared_tmp / "locked-root"
    write(locked_root / "z.bin", b"z")
    locked_root.chmod(0o000)
    state = shared_tmp / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY, NOBODY)

    def scan() -> object:
        with Scanner(config(locked_root, root), state / "c.db") as s:
            res = s.scan()
        return {"paths": sorted(paths(res)), "problems": sorted([p.path, p.kind, p.message] for p in res.problems)}

    got = run_unprivileged(scan)
    assert isinstance(got, dict)
    assert got["paths"] == [str(root / "ok" / "w.bin")]
    assert got["problems"] == [
        [str(root / "locked"), "unreadable", "cannot read directory: Permission denied"],
        [str(locked_root), "unreadable", "cannot read directory: Permission denied"],
    ]


def test_unreadable_file_is_a_problem(shared_tmp: Path) -> None:
    root = shared_tmp / "data"
    write(root / "secret.bin", b"s").chmod(0o000)
    write(root / "fine.bin", b"f").chmod(0o644)
    state = shared_tmp / "state"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY, NOBODY)

    def scan() -> object:
        with Scanner(config(root), state / "c.db") as s:
            res = s.scan()
        return {"paths": sorted(paths(res)), "problems": [[p.path, p.kind] for p in res.problems]}

    got = run_unprivileged(scan)
    assert got == {"paths": [str(root / "fine.bin")], "problems": [[str(root / "secret.bin"), "unreadable"]]}


def test_file_deleted_before_hashing_is_a_problem(tree: Path, cache: Path) -> None:
    victim = str(tree / "model" / "a.safetensors")

    def delete(path: str) -> None:
        if path == victim:
            os.unlink(path)

    with Scanner(config(tree), cache, hasher=CountingHasher(before=delete)) as s:
        res = s.scan()
    assert [(p.path, p.kind) for p in res.problems] == [(victim, "vanished")]
    assert len(res.records) == 2


def test_file_deleted_while_being_hashed_is_a_problem(tree: Path, cache: Path) -> None:
    """Unlinked while open: the bytes still read fine, but the file is gone, so no record."""
    victim = tree / "big.bin"
    write(victim, os.urandom(8 << 20))
    started = threading.Event()
    deleted = threading.Event()

    def remover() -> None:
        started.wait(10)
        victim.unlink()
        deleted.set()

    def hasher(path: str) -> tuple[int, str]:
        if path != str(victim):
            return hash_file(path)
        fd = os.open(path, os.O_RDONLY)  # opened, as hash_file has it when the file goes
        try:
            started.set()
            deleted.wait(10)
            return _hash_fd(fd)
        finally:
            os.close(fd)

    t = threading.Thread(target=remover)
    t.start()
    with Scanner(config(tree), cache, hasher=hasher) as s:
        res = s.scan()
    t.join()
    assert [(p.path, p.kind) for p in res.problems] == [(str(victim), "vanished")]
    assert len(res.records) == 3 and str(victim) not in paths(res)


def _hash_fd(fd: int) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def test_file_growing_while_hashed_is_a_problem(tree: Path, cache: Path) -> None:
    victim = str(tree / "model" / "b.bin")

    def grow(path: str) -> None:
        if path == victim:
            with open(path, "ab") as f:
                f.write(b"appended by a writer")

    h = CountingHasher(before=grow)
    with Scanner(config(tree), cache, hasher=h) as s:
        res = s.scan()
        assert [(p.path, p.kind) for p in res.problems] == [(victim, "changed")]
        assert victim not in paths(res)
        h.before = None
        res = s.scan()  # settled now: hashed and recorded
    assert victim in paths(res) and res.problems == ()


def test_hasher_crash_is_a_problem_not_a_crash(tree: Path, cache: Path) -> None:
    def bad(path: str) -> tuple[int, str]:
        if path.endswith("b.bin"):
            raise RuntimeError("boom")
        return hash_file(path)

    with Scanner(config(tree), cache, hasher=bad) as s:
        res = s.scan()
    assert [p.kind for p in res.problems] == ["error"] and "boom" in res.problems[0].message
    assert len(res.records) == 2


@pytest.mark.parametrize("follow", [False, True])
def test_symlink_loop_terminates(tree: Path, cache: Path, follow: bool) -> None:
    (tree / "model" / "a").symlink_to(".")
    (tree / "self").symlink_to("self")
    with Scanner(config(tree, follow_symlinks=follow), cache) as s:
        res = s.scan()
    assert len(res.records) == 3  # nothing found twice through the loop
    if follow:
        assert sorted((p.path, p.kind) for p in res.problems) == [
            (str(tree / "model" / "a"), "loop"),
            (str(tree / "self"), "loop"),
        ]
    else:
        assert res.problems == () and res.stats.symlinks_skipped == 2


def test_followed_symlinks_to_files_are_recorded(tmp_path: Path, cache: Path) -> None:
    blobs = tmp_path / "hub" / "blobs"
    snap = tmp_path / "hub" / "snapshots" / "rev1"
    write(blobs / "f00d", b"weights")
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to("../../blobs/f00d")
    (snap / "dangling.bin").symlink_to("../../blobs/missing")
    with Scanner(config(tmp_path / "hub", follow_symlinks=True), cache) as s:
        res = s.scan()
    assert paths(res) == {str(snap / "model.safetensors")}  # the blob has no weight suffix
    assert res.records[0].sha256 == sha(b"weights") and res.problems == ()
    with Scanner(config(tmp_path / "hub", follow_symlinks=False), tmp_path / "state" / "b.db") as s:
        assert s.scan().records == ()


# --- incremental --------------------------------------------------------------------------------


def test_rescan_paths_updates_only_those(tree: Path, cache: Path) -> None:
    h = CountingHasher()
    with Scanner(config(tree), cache, hasher=h) as s:
        s.scan()
        h.calls.clear()
        new = write(tree / "other" / "new.pt", b"new")
        (tree / "model" / "b.bin").write_bytes(b"changed")
        res = s.rescan_paths([new])
        assert h.calls == [str(new)]  # b.bin changed too, but was not named
        assert res.by_path()[str(new)].sha256 == sha(b"new")
        assert res.by_path()[str(tree / "model" / "b.bin")].sha256 == sha(b"B" * 3000)
        res = s.rescan_paths([tree / "model"])
        assert res.by_path()[str(tree / "model" / "b.bin")].sha256 == sha(b"changed")
        (tree / "other" / "x.gguf").unlink()
        new.unlink()
        res = s.rescan_paths([tree / "other"])
        assert not any(p.startswith(str(tree / "other")) for p in paths(res))
        shutil.rmtree(tree / "model")
        res = s.rescan_paths([tree / "model", "/somewhere/else/entirely.bin"])
    assert res.records == () and res.problems == ()
    db = sqlite3.connect(cache)
    assert db.execute("SELECT count(*) FROM hashes").fetchone()[0] == 0
    db.close()


def test_rescan_of_overlapping_paths_hashes_each_file_once(tree: Path, cache: Path) -> None:
    h = CountingHasher()
    with Scanner(config(tree), cache, hasher=h) as s:
        res = s.rescan_paths([tree / "model" / "b.bin", tree / "model", tree, tree / "model"])
    assert sorted(h.calls) == sorted(r.path for r in res.records) and len(h.calls) == 3


def test_rescan_respects_exclude(tree: Path, cache: Path) -> None:
    with Scanner(config(tree, exclude=["*/scratch"]), cache) as s:
        f = write(tree / "scratch" / "sub" / "w.bin", b"w")
        assert str(f) not in paths(s.rescan_paths([f]))


def test_rescan_does_not_reach_behind_unfollowed_symlinks(tree: Path, tmp_path: Path, cache: Path) -> None:
    outside = write(tmp_path / "outside" / "w.bin", b"w")
    (tree / "link").symlink_to(outside.parent)
    with Scanner(config(tree), cache) as s:
        assert str(tree / "link" / "w.bin") not in paths(s.rescan_paths([tree / "link" / "w.bin"]))
        assert str(tree / "link" / "w.bin") not in paths(s.scan())
    with Scanner(config(tree, follow_symlinks=True), tmp_path / "state" / "f.db") as s:
        assert str(tree / "link" / "w.bin") in paths(s.rescan_paths([tree / "link" / "w.bin"]))
        assert str(tree / "link" / "w.bin") in paths(s.scan())


# --- priority -----------------------------------------------------------------------------------


def test_scan_hashes_at_idle_io_priority(tree: Path, cache: Path) -> None:
    classes: list[int] = []

    def hasher(path: str) -> tuple[int, str]:
        classes.append(psutil.Process(threading.get_native_id()).ionice().ioclass)
        return hash_file(path)

    with Scanner(config(tree), cache, hasher=hasher) as s:
        s.scan()
    assert classes == [psutil.IOPRIO_CLASS_IDLE] * 3
    classes.clear()
    with Scanner(config(tree, low_priority=False), tmp_path_cache(cache), hasher=hasher) as s:
        s.scan()
    assert psutil.IOPRIO_CLASS_IDLE not in classes and len(classes) == 3


def tmp_path_cache(cache: Path) -> Path:
    return cache.with_name("other-" + cache.name)


def test_hashing_threads_lower_their_own_priority() -> None:
    got: dict[str, object] = {}

    def body() -> None:
        got["reason"] = lower_thread_priority()
        got["ionice"] = psutil.Process(threading.get_native_id()).ionice().ioclass
        got["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert got == {"reason": None, "ionice": psutil.IOPRIO_CLASS_IDLE, "nice": 10}
    assert psutil.Process().ionice().ioclass != psutil.IOPRIO_CLASS_IDLE  # the caller is untouched


# --- watching -----------------------------------------------------------------------------------


def collect(w: Watcher, want: set[str], timeout: float = 10.0) -> set[str]:
    """Poll until every wanted path was reported (or the timeout passes)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not want <= seen and time.monotonic() < deadline:
        seen.update(w.poll(timeout=0.5))
    return seen


def test_inotify_sees_new_file_rename_and_delete(tree: Path, cache: Path) -> None:
    cfg = config(tree, exclude=["*/ignored"])
    (tree / "ignored").mkdir()
    with Watcher(cfg) as w, Scanner(cfg, cache) as s:
        assert w.mode == "inotify" and w.fallback_reason is None
        assert w.watch_count == 3  # data, model, other; not ignored
        s.scan()
        assert w.poll(timeout=0) == []
        new = write(tree / "model" / "c.safetensors", b"c")
        write(tree / "ignored" / "i.bin", b"i")
        assert collect(w, {str(new)}) == {str(new)}
        moved = tree / "other" / "renamed.safetensors"
        os.rename(new, moved)
        assert collect(w, {str(new), str(moved)}) == {str(new), str(moved)}
        changed = s.rescan_paths([str(new), str(moved)])
        assert str(moved) in paths(changed) and str(new) not in paths(changed)
        (tree / "model" / "b.bin").unlink()
        assert collect(w, {str(tree / "model" / "b.bin")}) == {str(tree / "model" / "b.bin")}


def test_inotify_watches_new_directories_recursively(tree: Path) -> None:
    with Watcher(config(tree)) as w:
        deep = tree / "new" / "deeper"
        deep.mkdir(parents=True)
        seen = collect(w, {str(tree / "new")})
        assert str(tree / "new") in seen  # the rescan of the directory catches early files
        late = write(deep / "late.bin", b"late")
        assert str(late) in collect(w, {str(late)})
        # A directory moved into the tree is watched under its new name.
        outside = tree.parent / "outside"
        write(outside / "sub" / "o.bin", b"o")
        os.rename(outside, tree / "moved-in")
        assert str(tree / "moved-in") in collect(w, {str(tree / "moved-in")})
        f = write(tree / "moved-in" / "sub" / "p.bin", b"p")
        assert str(f) in collect(w, {str(f)})


def test_polling_fallback_sees_changes(tree: Path) -> None:
    with Watcher(config(tree), use_inotify=False, poll_interval=0.05) as w:
        assert w.mode == "polling" and w.fallback_reason == "inotify disabled by configuration"
        new = write(tree / "model" / "c.safetensors", b"c")
        assert collect(w, {str(new)}) == {str(new)}
        moved = tree / "other" / "c2.safetensors"
        os.rename(new, moved)
        assert collect(w, {str(new), str(moved)}) == {str(new), str(moved)}
        (tree / "model" / "b.bin").write_bytes(b"rewritten")
        assert collect(w, {str(tree / "model" / "b.bin")}) == {str(tree / "model" / "b.bin")}


def test_running_out_of_watches_falls_back_to_polling(tree: Path) -> None:
    with Watcher(config(tree), max_watches=2, poll_interval=0.05) as w:
        assert w.mode == "polling"
        assert w.fallback_reason is not None and "budget of 2" in w.fallback_reason
        new = write(tree / "model" / "c.bin", b"c")
        assert collect(w, {str(new)}) == {str(new)}


def test_running_out_of_watches_later_asks_for_a_full_rescan(tree: Path) -> None:
    with Watcher(config(tree), max_watches=3, poll_interval=0.05) as w:
        assert w.mode == "inotify" and w.watch_count == 3
        (tree / "one-too-many").mkdir()
        seen = collect(w, {str(tree)})
        assert w.mode == "polling" and str(tree) in seen
        new = write(tree / "one-too-many" / "w.bin", b"w")
        assert str(new) in collect(w, {str(new)})
