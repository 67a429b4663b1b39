"""Manifest encoding: known-answer vectors, validation, path attacks."""

from __future__ import annotations

import hashlib

import pytest

from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    artifact_id_of,
    decode_manifest,
    validate_relpath,
)
from custos.errors import InvalidInput


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Known-answer vector for manifest v1. If this changes, every artifact id in
# every deployment changes: bump the manifest version instead.
KAT_FILES = [
    ("model-00002-of-00002.safetensors", b"world"),
    ("config.json", b"{}"),
    ("model-00001-of-00002.safetensors", b"hello"),
]
KAT_ENCODING = (
    b'{"digest":"sha256","files":[{"path":"config.json","sha256":"44136fa355b3678a1146ad16f7e8649e'
    b'94fb4fc21fe77e8310c060f61caaff8a","size":2},{"path":"model-00001-of-00002.safetensors","sha2'
    b'56":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","size":5},{"path":"mo'
    b'del-00002-of-00002.safetensors","sha256":"486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a'
    b'6c65260e9cb8a7","size":5}],"version":1}'
)
KAT_ID = "22d030c99bb43083e7a7ae158bfc0d5b718dd7a1debe6467b88c7bacfa6ae37b"


def kat_manifest() -> Manifest:
    return Manifest.from_entries(FileEntry(p, len(d), h(d)) for p, d in KAT_FILES)


def test_known_answer_encoding_and_id() -> None:
    m = kat_manifest()
    assert m.encode() == KAT_ENCODING
    assert m.artifact_id == KAT_ID
    assert artifact_id_of(KAT_ENCODING) == KAT_ID
    # The id is domain separated: not the plain hash of the encoding.
    assert KAT_ID != h(KAT_ENCODING)


def test_decode_roundtrip_and_order_independence() -> None:
    m = decode_manifest(KAT_ENCODING)
    assert [f.path for f in m.files] == sorted(p for p, _ in KAT_FILES)
    assert Manifest.from_entries(reversed(kat_manifest().files)).artifact_id == KAT_ID


def test_any_change_changes_the_id() -> None:
    base = kat_manifest()
    changed = [
        Manifest.from_entries([*base.files[:2], FileEntry(base.files[2].path, 6, base.files[2].sha256)]),
        Manifest.from_entries([*base.files[:2], FileEntry(base.files[2].path, 5, h(b"WORLD"))]),
        Manifest.from_entries([*base.files[:2], FileEntry("renamed.safetensors", 5, base.files[2].sha256)]),
        Manifest.from_entries(base.files[:2]),
    ]
    ids = {m.artifact_id for m in changed}
    assert KAT_ID not in ids and len(ids) == len(changed)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../outside",
        "a/../../b",
        "a/./b",
        "./a",
        "a//b",
        "a/",
        "",
        "a\\b",
        "..",
        ".",
        "a\x00b",
        "a\nb",
        "caf\u0065\u0301",  # not NFC
        "x" * 300,
        "\ud800",  # lone surrogates: from a JSON escape, or a file name that is not UTF-8
        "weights/\udcff.bin",  # (os.fsdecode's surrogateescape)
        "a/\udc80",
    ],
)
def test_bad_paths_rejected(path: str) -> None:
    with pytest.raises(ManifestError):
        validate_relpath(path)
    with pytest.raises(ManifestError):
        FileEntry(path, 1, h(b"x"))


def test_good_paths() -> None:
    for p in ["a", "a/b/c.safetensors", "café/é.bin", ".hidden", "..dots", "a..b"]:
        assert validate_relpath(p) == p


def test_duplicate_paths_rejected() -> None:
    with pytest.raises(ManifestError, match="duplicate"):
        Manifest.from_entries([FileEntry("a", 1, h(b"x")), FileEntry("a", 1, h(b"x"))])


def test_file_and_directory_clash_rejected() -> None:
    with pytest.raises(ManifestError, match="both a file and a directory"):
        Manifest.from_entries([FileEntry("a", 1, h(b"x")), FileEntry("a/b", 1, h(b"x"))])


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "a", "size": -1, "sha256": "0" * 64},
        {"path": "a", "size": True, "sha256": "0" * 64},
        {"path": "a", "size": 1, "sha256": "0" * 63},
        {"path": "a", "size": 1, "sha256": "G" * 64},
        {"path": "a", "size": 1, "sha256": "A" * 64},
    ],
)
def test_bad_entries_rejected(entry: dict[str, object]) -> None:
    data = encode_canonical({"digest": "sha256", "files": [entry], "version": 1})
    with pytest.raises(ManifestError):
        decode_manifest(data)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace(b'"version":1', b'"version":2'),
        lambda s: s.replace(b'"digest":"sha256"', b'"digest":"md5"'),
        lambda s: s.replace(b"{", b"{ ", 1),  # not canonical whitespace
        lambda s: s + b"\n",
        lambda s: s[:-1],
        lambda s: s.replace(b'"files":[', b'"extra":1,"files":['),
        lambda s: s.replace(b'"path":"config.json"', b'"path":"config\\ud800.json"'),  # lone surrogate
        lambda s: s.replace(b'"path":"config.json"', b'"\\udc00":"config.json"'),  # as a key
        lambda s: s.replace(b'"size":2', b'"size":' + b"[" * 5000),  # deeper than the parser's stack
    ],
)
def test_non_canonical_or_unknown_encodings_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError):
        decode_manifest(mutate(KAT_ENCODING))


def test_unsorted_files_rejected() -> None:
    obj = decode_canonical(KAT_ENCODING)
    obj["files"].reverse()
    with pytest.raises(ManifestError, match="order"):
        decode_manifest(encode_canonical(obj))


def test_canonical_rejects_floats_and_bad_types() -> None:
    with pytest.raises(InvalidInput):
        encode_canonical({"x": 1.5})
    with pytest.raises(InvalidInput):
        decode_canonical(b'{"x":1.5}')
    with pytest.raises(InvalidInput):
        encode_canonical({1: "x"})
    assert encode_canonical({"b": [1, True, None], "a": "é"}) == '{"a":"é","b":[1,true,null]}'.encode()
