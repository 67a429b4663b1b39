"""Matching a host inventory against manifests: table of layouts, then real files end to end."""

from __future__ import annotations

import hashlib

import pytest

from custos.core.manifest import FileEntry, Manifest
from custos.core.matching import (
    ArtifactFile,
    CompleteCopy,
    Form,
    HashedFile,
    ManifestIndex,
    PartialCopy,
    ScatteredCopy,
    UnregisteredWeights,
    match_inventory,
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


def test_complete_copy_at_any_root() -> None:
    records = [
        rec(f"/data/x/{p}", c)
        for p, c in [("model-1.safetensors", "a1"), ("model-2.safetensors", "a2"), ("sub/config.bin", "a3")]
    ]
    records += [
        rec(f"/mnt/y/{p}", c)
        for p, c in [  # relocated: the same artifact elsewhere
            ("model-1.safetensors", "a1"),
            ("model-2.safetensors", "a2"),
            ("sub/config.bin", "a3"),
        ]
    ]
    m = match_inventory({A.artifact_id: A}, records)
    assert m.complete == (
        CompleteCopy(
            A.artifact_id,
            "/data/x",
            ("/data/x/model-1.safetensors", "/data/x/model-2.safetensors", "/data/x/sub/config.bin"),
        ),
        CompleteCopy(
            A.artifact_id,
            "/mnt/y",
            ("/mnt/y/model-1.safetensors", "/mnt/y/model-2.safetensors", "/mnt/y/sub/config.bin"),
        ),
    )
    assert m.partial == m.scattered == m.unregistered == ()
    assert len(m.files) == 6 and not any(f.renamed for f in m.files)
    assert m.artifacts_present() == {A.artifact_id}


def test_partial_copy_lists_what_is_missing() -> None:
    m = match_inventory(REG, [rec("/data/x/model-2.safetensors", "a2"), rec("/data/x/sub/config.bin", "a3")])
    assert m.complete == ()
    assert m.partial == (
        PartialCopy(
            A.artifact_id,
            "/data/x",
            present=("model-2.safetensors", "sub/config.bin"),
            missing=("model-1.safetensors",),
        ),
    )


def test_wrong_content_at_the_right_path_is_not_a_match() -> None:
    m = match_inventory(REG, [rec("/d/w.gguf", "something else")])
    assert m.files == () and m.complete == ()
    assert m.unregistered == (UnregisteredWeights("/d/w.gguf", 10, h("something else")),)


def test_renamed_shard_matches_by_hash() -> None:
    m = match_inventory(REG, [rec("/home/u/stolen.bin", "c1")])
    (f,) = m.files
    assert f.path == "/home/u/stolen.bin" and f.renamed
    assert f.refs == (ArtifactFile(C.artifact_id, "w.gguf"),)
    # C has one file, so all of its bytes are here: a scattered (renamed) copy.
    assert m.scattered == (ScatteredCopy(C.artifact_id, (("w.gguf", "/home/u/stolen.bin"),)),)
    assert m.complete == m.partial == ()


def test_scattered_copy_across_directories() -> None:
    records = [rec("/a/model-1.safetensors", "a1"), rec("/b/renamed.bin", "a2"), rec("/c/sub/config.bin", "a3")]
    m = match_inventory({A.artifact_id: A}, records)
    assert m.complete == ()
    assert m.scattered == (
        ScatteredCopy(
            A.artifact_id,
            (
                ("model-1.safetensors", "/a/model-1.safetensors"),
                ("model-2.safetensors", "/b/renamed.bin"),
                ("sub/config.bin", "/c/sub/config.bin"),
            ),
        ),
    )
    # Each correctly named file is also a one-file partial copy at its own root.
    assert {(p.root, p.present) for p in m.partial} == {("/a", ("model-1.safetensors",)), ("/c", ("sub/config.bin",))}
    assert [f.renamed for f in m.files] == [False, True, False]


def test_unregistered_weights() -> None:
    m = match_inventory(REG, [rec("/data/new.safetensors", "never registered"), rec("/data/w.gguf", "c1")])
    assert m.unregistered == (UnregisteredWeights("/data/new.safetensors", 10, h("never registered")),)
    assert [c.artifact_id for c in m.complete] == [C.artifact_id]


def test_two_artifacts_sharing_a_file() -> None:
    records = [
        rec(f"/m/{p}", c)
        for p, c in [("model-1.safetensors", "a1"), ("model-2.safetensors", "a2"), ("sub/config.bin", "a3")]
    ]
    m = match_inventory(REG, records)
    shared = next(f for f in m.files if f.path == "/m/model-1.safetensors")
    assert shared.refs == tuple(
        sorted([ArtifactFile(A.artifact_id, "model-1.safetensors"), ArtifactFile(B.artifact_id, "model-1.safetensors")])
    )
    assert [c.artifact_id for c in m.complete] == [A.artifact_id]
    # B looks partly present, but only through the file it shares with A's complete copy.
    assert m.partial == (
        PartialCopy(
            B.artifact_id,
            "/m",
            present=("model-1.safetensors",),
            missing=("adapter.safetensors",),
            covered_by=(A.artifact_id,),
        ),
    )
    assert m.artifacts_present() == {A.artifact_id, B.artifact_id}
    # Both complete side by side: two complete copies, nothing partial.
    m = match_inventory(REG, [*records, rec("/m/adapter.safetensors", "b2")])
    assert sorted(c.artifact_id for c in m.complete) == sorted([A.artifact_id, B.artifact_id])
    assert m.partial == ()


def test_partial_covered_by_a_smaller_complete_artifact() -> None:
    m = match_inventory(REG, [rec("/m/model-1.safetensors", "a1"), rec("/m/adapter.safetensors", "b2")])
    assert [c.artifact_id for c in m.complete] == [B.artifact_id]
    (a,) = m.partial
    assert a.artifact_id == A.artifact_id and a.covered_by == (B.artifact_id,)
    assert a.missing == ("model-2.safetensors", "sub/config.bin")


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
    assert [c.paths for c in m.complete] == [("/d/a.bin", "/d/b.bin")]


def test_ciphertext_is_kept_aside() -> None:
    enc = rec("/d/w.gguf", "c1", form="ciphertext")
    m = match_inventory(REG, [enc])
    assert m.ciphertext == (enc,)
    assert m.files == m.complete == m.unregistered == ()


def test_empty_files_count_for_completeness_but_are_never_reported_alone() -> None:
    e = Manifest.from_entries([FileEntry("w.bin", 10, h("w")), FileEntry("empty.bin", 0, h(""))])
    empty = HashedFile("/x/empty.bin", 0, h(""))
    other_empty = HashedFile("/y/other.bin", 0, h(""))
    m = match_inventory({e.artifact_id: e}, [empty, other_empty])
    assert m.files == m.partial == m.unregistered == m.scattered == m.complete == ()
    m = match_inventory({e.artifact_id: e}, [empty, rec("/x/w.bin", "w")])
    assert [c.root for c in m.complete] == ["/x"]


def test_root_directory_copy() -> None:
    m = match_inventory(REG, [rec("/w.gguf", "c1")])
    assert m.complete == (CompleteCopy(C.artifact_id, "/", ("/w.gguf",)),)


def test_index_is_reusable_and_by_hash() -> None:
    idx = ManifestIndex(REG)
    assert len(idx) == 3
    assert {aid for aid, _ in idx.refs(h("a1"))} == {A.artifact_id, B.artifact_id}
    assert idx.refs(h("nothing")) == []
    records = [rec("/w.gguf", "c1")]
    assert idx.match(records) == idx.match(records)
    assert [c.artifact_id for c in idx.match(records).complete] == [C.artifact_id]


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


def test_bad_records_rejected() -> None:
    with pytest.raises(InvalidInput, match="duplicate"):
        match_inventory(REG, [rec("/a.bin", "x"), rec("/a.bin", "y")])
    with pytest.raises(InvalidInput):
        match_inventory(REG, ["/a.bin"])  # type: ignore[list-item]


def test_many_manifests_and_files() -> None:
    """10,000 one-file artifacts against 10,000 files: each file meets only its own artifact."""
    regs = {}
    records = []
    for i in range(10_000):
        m = manifest(**{f"shard-{i}.bin": f"c{i}"})
        regs[m.artifact_id] = m
        records.append(rec(f"/d/{i % 7}/shard-{i}.bin", f"c{i}"))
    out = match_inventory(regs, records)
    assert len(out.complete) == 10_000 and out.partial == () and out.unregistered == ()
