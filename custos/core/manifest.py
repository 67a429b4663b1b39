"""Artifact manifests: every file's relative path, size and SHA-256.

An artifact is identified by the digest of its canonical manifest, so the same
bytes registered twice get the same id and any change to any file gives a new
one. The encoding is specified in docs/manifest.md; known-answer vectors live in
tests/core/test_manifest.py and must keep passing across releases.

Pure logic: nothing here touches the file system (see custos.fs.hashing).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import InvalidInput

MANIFEST_VERSION = 1
DIGEST_NAME = "sha256"
# Domain separation: an artifact id can never collide with the hash of any
# other object Custos hashes (audit events, orders, signer sets).
ARTIFACT_ID_DOMAIN = b"custos.v1.artifact-manifest\x00"

MAX_FILES = 100_000
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(InvalidInput):
    """A manifest or one of its paths is malformed or disallowed."""


def validate_relpath(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside an artifact.

    Rejects lone surrogates, absolute paths, ``..`` and ``.`` components, empty
    components, backslashes, control characters and non-NFC Unicode (two spellings
    of one name would otherwise be two files). Raises ManifestError.
    """
    if not isinstance(path, str) or not path:
        raise ManifestError("empty path")
    try:
        encoded = path.encode("utf-8", errors="strict")
    except UnicodeEncodeError:
        # A lone surrogate: from a JSON escape, or a file name that is not UTF-8 (os.fsdecode's
        # surrogateescape). It has no canonical bytes. (repr() escapes it in the message.)
        raise ManifestError(f"path is not valid Unicode (a lone surrogate): {path[:200]!r}") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise ManifestError(f"path too long: {path[:64]!r}…")
    if path.startswith("/"):
        raise ManifestError(f"absolute path not allowed: {path!r}")
    if "\\" in path:
        raise ManifestError(f"backslash not allowed in path: {path!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ManifestError(f"control character in path: {path!r}")
    if unicodedata.normalize("NFC", path) != path:
        raise ManifestError(f"path is not NFC-normalized: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ManifestError(f"path component {part!r} not allowed: {path!r}")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise ManifestError(f"path component too long: {path[:64]!r}…")
    return path


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        validate_relpath(self.path)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ManifestError(f"bad size for {self.path!r}")
        if not isinstance(self.sha256, str) or not _HEX64.match(self.sha256):
            raise ManifestError(f"bad sha256 for {self.path!r}: want 64 lowercase hex digits")


@dataclass(frozen=True, slots=True)
class Manifest:
    """An immutable, validated, path-sorted list of files."""

    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        if len(self.files) > MAX_FILES:
            raise ManifestError(f"too many files: {len(self.files)} > {MAX_FILES}")
        ordered = tuple(sorted(self.files, key=lambda f: f.path.encode()))
        seen: set[str] = set()
        prefixes: set[str] = set()
        for entry in ordered:
            if entry.path in seen:
                raise ManifestError(f"duplicate path: {entry.path!r}")
            seen.add(entry.path)
            parts = entry.path.split("/")
            for i in range(1, len(parts)):
                prefixes.add("/".join(parts[:i]))
        clash = seen & prefixes
        if clash:
            raise ManifestError(f"path is both a file and a directory: {sorted(clash)[0]!r}")
        object.__setattr__(self, "files", ordered)

    @classmethod
    def from_entries(cls, entries: Iterable[FileEntry]) -> Manifest:
        return cls(files=tuple(entries))

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, object]:
        return {
            "digest": DIGEST_NAME,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "version": MANIFEST_VERSION,
        }

    def encode(self) -> bytes:
        """The canonical bytes (docs/manifest.md)."""
        return encode_canonical(self.to_json())

    @property
    def artifact_id(self) -> str:
        return artifact_id_of(self.encode())

    def entry(self, path: str) -> FileEntry | None:
        for f in self.files:
            if f.path == path:
                return f
        return None


def artifact_id_of(canonical_manifest: bytes) -> str:
    return hashlib.sha256(ARTIFACT_ID_DOMAIN + canonical_manifest).hexdigest()


def decode_manifest(data: bytes) -> Manifest:
    """Parse and validate canonical manifest bytes. Raises ManifestError."""
    try:
        obj = decode_canonical(data)
    except InvalidInput as exc:
        raise ManifestError(f"manifest: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"digest", "files", "version"}:
        raise ManifestError("manifest: want exactly the keys digest, files, version")
    if obj["version"] != MANIFEST_VERSION:
        raise ManifestError(f"manifest: unsupported version {obj['version']!r}")
    if obj["digest"] != DIGEST_NAME:
        raise ManifestError(f"manifest: unsupported digest {obj['digest']!r}")
    files = obj["files"]
    if not isinstance(files, list):
        raise ManifestError("manifest: files must be a list")
    entries = []
    for item in files:
        if not isinstance(item, dict) or set(item) != {"path", "sha256", "size"}:
            raise ManifestError("manifest: each file wants exactly path, sha256, size")
        entries.append(FileEntry(path=item["path"], size=item["size"], sha256=item["sha256"]))
    manifest = Manifest.from_entries(entries)
    if manifest.encode() != data:
        # Sorted order is part of the canonical form.
        raise ManifestError("manifest: files are not in canonical order")
    return manifest


def is_artifact_id(value: str) -> bool:
    return bool(_HEX64.match(value))
