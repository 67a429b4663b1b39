"""Matching a host inventory against manifests: custody by content, whatever the names.

A table of the places and names an attacker would put a registered file in, the
in-place layouts, and Hypothesis properties: every file holding registered bytes
is in a copy of that artifact, and renaming or moving files never changes which
artifacts are present.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.core.manifest import FileEntry, Manifest
from custos.core.matching import (
    ArtifactFile,
    Form,
    HashedFile,
    HostCopy,
    InventoryMatch,
    ManifestIndex,
    ScatteredCopy,
    UnregisteredWeights,
    match_inventory,
    weight_like_name,
)
from custos.errors import InvalidInput


def h(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def manifest(**files: str) -> Manifest:
    """manifest(**{"a.bin": "content-name"}): each file's hash is h(content-name), size 10."""
    return Manifest.from_entries(FileEntry(path=p, size=10, sha256=h(c)) for p, c in files.items())


def rec(path: str, content: str, *, size: int = 10, form: Form = "plaintext") -> HashedFile:
    return HashedFile(path=path, size=size, sha256=h(content), form=form)


A = manifest(**{"model-1.safetensors": "a1", "model-2.safetensors": "a2", "sub/config.bin": "a3"})
B = manifest(**{"model-1.safetensors": "a1", "adapter.safetensors": "b2"})  # shares a1 with A
C = manifest(**{"w.gguf": "c1"})
REG = {A.artifact_id: A, B.artifact_id: B, C.artifact_id: C}
NAMES = {A.artifact_id: "A", B.artifact_id: "B", C.artifact_id: "C"}


def summary(m: InventoryMatch) -> set[tuple[str, str, str, int, tuple[str, ...]]]:
    """(artifact, location, complete|partial, files held, host paths under other names) per copy."""
    return {(NAMES[c.artifact_id], c.location, "complete" if c.complete else "partial", len(c.files), c.renamed)
            for c in m.copies if not c.covered_by}


# --- the attacker's table: names and places ------------------------------------------------------

PLACES = [
    # (what the attacker did, host files, copies expected)
    ("renamed.bin", [("/home/u/renamed.bin", "c1")],
     {("C", "/home/u", "complete", 1, ("/home/u/renamed.bin",))}),
    ("notes.txt", [("/home/u/notes.txt", "c1")],
     {("C", "/home/u", "complete", 1, ("/home/u/notes.txt",))}),
    (".bak", [("/data/model.safetensors.bak", "c1")],
     {("C", "/data", "complete", 1, ("/data/model.safetensors.bak",))}),
    ("no extension", [("/scratch/x/blob", "c1")],
     {("C", "/scratch/x", "complete", 1, ("/scratch/x/blob",))}),
    ("hidden file", [("/scratch/.cache/.w", "c1")],
     {("C", "/scratch/.cache", "complete", 1, ("/scratch/.cache/.w",))}),
    ("nested deep", [("/a/b/c/d/e/f/g", "c1")],
     {("C", "/a/b/c/d/e/f", "complete", 1, ("/a/b/c/d/e/f/g",))}),
    ("the file system root", [("/w", "c1")],
     {("C", "/", "complete", 1, ("/w",))}),
    ("hard link elsewhere: two names, two copies",
     [("/data/m/w.gguf", "c1"), ("/scratch/link", "c1")],
     {("C", "/data/m", "complete", 1, ()), ("C", "/scratch", "complete", 1, ("/scratch/link",))}),
    ("hard link beside it: the copy at the file itself",
     [("/d/w.gguf", "c1"), ("/d/w.gguf.lnk", "c1")],
     {("C", "/d", "complete", 1, ()), ("C", "/d/w.gguf.lnk", "complete", 1, ("/d/w.gguf.lnk",))}),
    ("every file renamed into one directory",
     [("/stash/1", "a1"), ("/stash/2", "a2"), ("/stash/3", "a3")],
     {("A", "/stash", "complete", 3, ("/stash/1", "/stash/2", "/stash/3"))}),  # B's share: covered by A
    ("some files renamed: partial, n of m",
     [("/stash/2.txt", "a2"), ("/stash/3.txt", "a3")],
     {("A", "/stash", "partial", 2, ("/stash/2.txt", "/stash/3.txt"))}),
    ("one file renamed inside its tree: still the one complete copy",
     [("/m/model-1.safetensors", "a1"), ("/m/model-2.safetensors", "a2"), ("/m/sub/old/x", "a3")],
     {("A", "/m", "complete", 3, ("/m/sub/old/x",))}),
    ("a partial tree and a renamed file elsewhere",
     [("/m/model-1.safetensors", "a1"), ("/scratch/q", "a2")],
     {("A", "/m", "partial", 1, ()), ("B", "/m", "partial", 1, ()), ("A", "/scratch", "partial", 1, ("/scratch/q",))}),
    ("two renamed copies of the same bytes in one directory",
     [("/x/one", "c1"), ("/x/two", "c1")],
     {("C", "/x", "complete", 1, ("/x/one",)), ("C", "/x/two", "complete", 1, ("/x/two",))}),
]


@pytest.mark.parametrize(("files", "want"), [(f, w) for _, f, w in PLACES], ids=[d for d, _, _ in PLACES])
def test_registered_bytes_are_a_copy_whatever_the_name_or_place(
        files: list[tuple[str, str]], want: set[tuple[str, str, str, int, tuple[str, ...]]]) -> None:
    m = match_inventory(REG, [rec(p, c) for p, c in files])
    assert summary(m) == want
    assert m.unregistered == ()
    # Every file holding registered bytes is in a copy.
    held = {p for c in m.copies for p in c.host_paths}
    assert {p for p, _ in files} <= held


def test_partial_copy_lists_what_it_holds_and_what_is_missing() -> None:
    m = match_inventory({A.artifact_id: A}, [rec("/data/x/model-2.safetensors", "a2"), rec("/data/x/moved", "a3")])
    assert m.copies == (HostCopy(
        A.artifact_id, "/data/x",
        files=(("model-2.safetensors", "/data/x/model-2.safetensors"), ("sub/config.bin", "/data/x/moved")),
        missing=("model-1.safetensors",), renamed=("/data/x/moved",)),)
    (c,) = m.copies
    assert (len(c.files), c.total, c.complete) == (2, 3, False)
    assert m.partial == m.copies and m.complete == ()


def test_complete_copy_at_any_root() -> None:
    layout = [("model-1.safetensors", "a1"), ("model-2.safetensors", "a2"), ("sub/config.bin", "a3")]
    records = [rec(f"/data/x/{p}", c) for p, c in layout] + [rec(f"/mnt/y/{p}", c) for p, c in layout]
    m = match_inventory({A.artifact_id: A}, records)
    assert [(c.location, c.host_paths, c.renamed) for c in m.complete] == [
        ("/data/x", ("/data/x/model-1.safetensors", "/data/x/model-2.safetensors", "/data/x/sub/config.bin"), ()),
        ("/mnt/y", ("/mnt/y/model-1.safetensors", "/mnt/y/model-2.safetensors", "/mnt/y/sub/config.bin"), ()),
    ]
    assert m.partial == m.scattered == m.unregistered == ()
    assert len(m.files) == 6 and not any(f.renamed for f in m.files)
    assert m.artifacts_present() == {A.artifact_id}


def test_wrong_content_at_the_right_path_is_not_a_match() -> None:
    m = match_inventory(REG, [rec("/d/w.gguf", "something else")])
    assert m.files == () and m.copies == ()
    assert m.unregistered == (UnregisteredWeights("/d/w.gguf", 10, h("something else")),)


def test_same_hash_other_size_is_not_a_match() -> None:
    m = match_inventory(REG, [rec("/d/w.gguf", "c1", size=11)])
    assert m.copies == () and [u.path for u in m.unregistered] == ["/d/w.gguf"]


def test_renamed_file_match_names_every_artifact_file_with_its_bytes() -> None:
    m = match_inventory(REG, [rec("/home/u/stolen.bin", "a1")])
    (f,) = m.files
    assert f.renamed and f.refs == (ArtifactFile(A.artifact_id, "model-1.safetensors"),
                                    ArtifactFile(B.artifact_id, "model-1.safetensors"))
    assert m.artifacts_present() == {A.artifact_id, B.artifact_id}


def test_scattered_copy_across_directories() -> None:
    records = [rec("/a/model-1.safetensors", "a1"), rec("/b/renamed.bin", "a2"), rec("/c/sub/config.bin", "a3")]
    m = match_inventory({A.artifact_id: A}, records)
    assert m.complete == ()
    assert m.scattered == (ScatteredCopy(A.artifact_id, (
        ("model-1.safetensors", "/a/model-1.safetensors"),
        ("model-2.safetensors", "/b/renamed.bin"),
        ("sub/config.bin", "/c/sub/config.bin"),
    )),)
    # Each piece is a one-file partial copy where it is.
    assert {(c.location, len(c.files), c.total) for c in m.copies} == {("/a", 1, 3), ("/b", 1, 3), ("/c", 1, 3)}
    assert [f.renamed for f in m.files] == [False, True, False]


def test_unregistered_weights() -> None:
    m = match_inventory(REG, [rec("/data/new.safetensors", "never registered"), rec("/data/w.gguf", "c1")])
    assert m.unregistered == (UnregisteredWeights("/data/new.safetensors", 10, h("never registered")),)
    assert [c.artifact_id for c in m.complete] == [C.artifact_id]


def test_two_artifacts_sharing_a_file() -> None:
    layout = [("model-1.safetensors", "a1"), ("model-2.safetensors", "a2"), ("sub/config.bin", "a3")]
    records = [rec(f"/m/{p}", c) for p, c in layout]
    m = match_inventory(REG, records)
    assert [c.artifact_id for c in m.complete] == [A.artifact_id]
    # B looks partly present, but only through the file it shares with A's complete copy.
    (b,) = m.partial
    assert (b.artifact_id, b.location, b.missing, b.covered_by) == (
        B.artifact_id, "/m", ("adapter.safetensors",), (A.artifact_id,))
    m = match_inventory(REG, [*records, rec("/m/adapter.safetensors", "b2")])
    assert sorted(c.artifact_id for c in m.complete) == sorted([A.artifact_id, B.artifact_id])
    assert m.partial == ()


def test_partial_with_bytes_of_its_own_is_not_covered() -> None:
    m = match_inventory(
        REG,
        [rec("/m/model-1.safetensors", "a1"), rec("/m/adapter.safetensors", "b2"), rec("/m/model-2.safetensors", "a2")],
    )
    (a,) = m.partial
    assert a.artifact_id == A.artifact_id and a.covered_by == () and a.missing == ("sub/config.bin",)


def test_same_bytes_twice_in_one_copy() -> None:
    dup = manifest(**{"a.bin": "same", "b.bin": "same"})
    m = match_inventory({dup.artifact_id: dup}, [rec("/d/a.bin", "same"), rec("/d/b.bin", "same")])
    assert [c.host_paths for c in m.complete] == [("/d/a.bin", "/d/b.bin")]
    # Renamed, both names fill both files of the one copy in their directory.
    m = match_inventory({dup.artifact_id: dup}, [rec("/e/x", "same"), rec("/e/y", "same")])
    assert [(c.location, c.host_paths) for c in m.copies] == [("/e", ("/e/x", "/e/y"))]


def test_ciphertext_is_kept_aside() -> None:
    enc = rec("/d/w.gguf", "c1", form="ciphertext")
    m = match_inventory(REG, [enc])
    assert m.ciphertext == (enc,)
    assert m.files == m.copies == m.unregistered == ()


def test_empty_files_carry_no_weights_and_are_ignored() -> None:
    e = Manifest.from_entries([FileEntry("w.bin", 10, h("w")), FileEntry("empty.bin", 0, h(""))])
    empty = HashedFile("/x/empty.bin", 0, h(""))
    other_empty = HashedFile("/y/other.bin", 0, h(""))
    m = match_inventory({e.artifact_id: e}, [empty, other_empty])
    assert m.files == m.copies == m.unregistered == m.scattered == ()
    m = match_inventory({e.artifact_id: e}, [rec("/x/w.bin", "w")])  # without its empty file: complete
    assert [(c.location, c.total) for c in m.complete] == [("/x", 1)]


def test_index_is_reusable_and_by_hash() -> None:
    idx = ManifestIndex(REG)
    assert len(idx) == 3
    assert {aid for aid, _ in idx.refs(h("a1"))} == {A.artifact_id, B.artifact_id}
    assert idx.refs(h("nothing")) == []
    records = [rec("/w.gguf", "c1")]
    assert idx.match(records) == idx.match(records)
    assert [c.artifact_id for c in idx.match(records).complete] == [C.artifact_id]


@pytest.mark.parametrize(
    ("name", "weight_like"),
    [("model.safetensors", True), ("W.GGUF", True), ("model.safetensors.bak", True), ("x.pt.old", True),
     ("notes.txt", False), ("blob", False), ("safetensors", False), ("bin", False), ("a.binary", False)],
)
def test_weight_like_name(name: str, weight_like: bool) -> None:
    assert weight_like_name(name) is weight_like


@pytest.mark.parametrize(
    "bad",
    [
        {"not-an-id": A},
        {B.artifact_id: A},  # the id of another manifest: would misattribute copies
        {A.artifact_id: "manifest"},
    ],
)
def test_bad_registry_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        ManifestIndex(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["relative/w.gguf", "", "/a\x00b"])
def test_records_without_an_absolute_path_are_rejected(path: str) -> None:
    with pytest.raises(InvalidInput, match="absolute host path"):
        match_inventory(REG, [rec(path, "c1")])


def test_bad_records_rejected() -> None:
    with pytest.raises(InvalidInput, match="duplicate"):
        match_inventory(REG, [rec("/a.bin", "x"), rec("/a.bin", "y")])
    with pytest.raises(InvalidInput):
        match_inventory(REG, ["/a.bin"])  # type: ignore[list-item]


def test_many_manifests_and_files() -> None:
    """10,000 one-file artifacts against 10,000 files, half renamed: each file meets only its own artifact."""
    regs = {}
    records = []
    for i in range(10_000):
        m = manifest(**{f"shard-{i}.bin": f"c{i}"})
        regs[m.artifact_id] = m
        records.append(rec(f"/d/{i % 7}/shard-{i}.bin" if i % 2 else f"/d/{i % 7}/x-{i}", f"c{i}"))
    out = match_inventory(regs, records)
    assert len(out.complete) == 10_000 and out.partial == () and out.unregistered == ()


# --- properties: renames and moves change nothing about what is present ----------------------------

RELPATHS = ("a.bin", "b.safetensors", "sub/c.pt", "d/e/f.gguf")
NAME = st.from_regex(r"[a-z0-9_-][a-z0-9._-]{0,7}", fullmatch=True)
DIR = st.lists(NAME, min_size=0, max_size=3).map(lambda parts: "/" + "/".join(parts) if parts else "")


@st.composite
def registries(draw: st.DrawFn) -> dict[str, Manifest]:
    """1-4 artifacts of 1-4 files; contents drawn from a small pool, so artifacts share files."""
    out: dict[str, Manifest] = {}
    for _ in range(draw(st.integers(1, 4))):
        paths = draw(st.lists(st.sampled_from(RELPATHS), min_size=1, max_size=4, unique=True))
        m = manifest(**{p: f"c{draw(st.integers(0, 7))}" for p in paths})
        out[m.artifact_id] = m
    return out


@st.composite
def placements(draw: st.DrawFn) -> tuple[dict[str, Manifest], dict[str, str]]:
    """A registry and a host holding some of its files, in place under random roots (path -> content)."""
    reg = draw(registries())
    host: dict[str, str] = {}
    for m in reg.values():
        root = "/r" + draw(DIR)
        for e in m.files:
            if draw(st.booleans()):
                host.setdefault(f"{root}/{e.path}", e.sha256)
    return reg, host


def as_records(host: dict[str, str]) -> list[HashedFile]:
    return [HashedFile(p, 10, sha) for p, sha in host.items()]


def held_by_artifact(reg: dict[str, Manifest], host: dict[str, str]) -> dict[str, set[str]]:
    """Per artifact, the hashes of its files that some host file holds: what any grouping must cover."""
    return {aid: {e.sha256 for e in m.files if e.sha256 in host.values()} for aid, m in reg.items()}


def covered_hashes(reg: dict[str, Manifest], m: InventoryMatch) -> dict[str, set[str]]:
    sha = {aid: {e.path: e.sha256 for e in man.files} for aid, man in reg.items()}
    out: dict[str, set[str]] = {aid: set() for aid in reg}
    for c in m.copies:
        out[c.artifact_id] |= {sha[c.artifact_id][mp] for mp, _ in c.files}
    return out


@settings(max_examples=300, deadline=None)
@given(placements(), st.data())
def test_renaming_and_moving_files_never_changes_what_is_present(
        case: tuple[dict[str, Manifest], dict[str, str]], data: st.DataObject) -> None:
    reg, host = case
    before = match_inventory(reg, as_records(host))
    # Every file holding registered bytes is in a copy of every artifact with those bytes.
    for path, sha in host.items():
        for aid, man in reg.items():
            if any(e.sha256 == sha for e in man.files):
                assert any(path in c.host_paths for c in before.copies if c.artifact_id == aid), (path, aid)
    assert covered_hashes(reg, before) == held_by_artifact(reg, host)

    # The attacker renames and moves every file anywhere, under any name.
    new_paths = data.draw(st.lists(st.tuples(DIR, NAME).map(lambda t: f"/x{t[0]}/{t[1]}"),
                                   min_size=len(host), max_size=len(host), unique=True))
    moved = dict(zip(new_paths, host.values(), strict=True))
    after = match_inventory(reg, as_records(moved))
    assert after.artifacts_present() == before.artifacts_present()
    assert covered_hashes(reg, after) == held_by_artifact(reg, host)
    assert {p for c in after.copies for p in c.host_paths} == set(moved)


@settings(max_examples=200, deadline=None)
@given(registries(), st.data())
def test_an_artifact_renamed_into_one_directory_is_a_complete_copy_there(
        reg: dict[str, Manifest], data: st.DataObject) -> None:
    aid, man = data.draw(st.sampled_from(sorted(reg.items())))
    names = data.draw(st.lists(NAME, min_size=len(man.files), max_size=len(man.files), unique=True))
    where = "/stash" + data.draw(DIR)
    placed = [HashedFile(f"{where}/{n}", 10, e.sha256) for n, e in zip(names, man.files, strict=True)]
    m = match_inventory(reg, placed)
    # One complete copy holds them all: at that directory, or above it when a name happens to
    # sit at its manifest path (``sub/c.pt`` in ``/stash/sub`` is in place under ``/stash``).
    (mine,) = [c for c in m.copies if c.artifact_id == aid and c.complete]
    assert set(mine.host_paths) == {r.path for r in placed} and mine.total == len(man.files)
    assert where == mine.location or where.startswith(mine.location.rstrip("/") + "/")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=0, max_size=30).map(lambda t: "/" + t),
                          st.sampled_from(["a1", "a2", "a3", "b2", "c1", "zz"])), max_size=8))
def test_any_absolute_path_is_matched_without_error(files: list[tuple[str, str]]) -> None:
    """What a compromised agent may report: ``//``, trailing slashes, ``..``, odd characters."""
    records = {p: rec(p, c) for p, c in files if "\x00" not in p}
    m = match_inventory(REG, records.values())
    held = {p for c in m.copies for p in c.host_paths}
    assert held == {p for p, r in records.items() if r.sha256 != h("zz")}
