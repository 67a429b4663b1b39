"""Match a host's file inventory against registered artifact manifests (pure).

A manifest lists relative paths, so a copy can sit under any directory: the
root of a copy is what remains of a host path once a manifest's relative path
is cut off its end (``/mnt/y/sub/a.bin`` holding ``sub/a.bin`` puts a copy at
``/mnt/y``). Each host file is looked up by SHA-256 in an index built once
from all manifests, so matching costs O(files + matches), not O(files x
manifests). The findings:

- :class:`CompleteCopy` — every file of an artifact under one root, at its
  relative path, with its hash;
- :class:`PartialCopy` — some of them, with the list of missing files;
- :class:`ScatteredCopy` — no complete tree, but every file's bytes are on the
  host somewhere (renamed, split across directories);
- :class:`FileMatch` — each host file whose hash belongs to some artifact,
  ``renamed`` when it is not at a manifest's relative path;
- :class:`UnregisteredWeights` — weight-like files that match nothing.

Zero-byte files carry no weight bytes: they count towards completeness but are
never reported on their own. Ciphertext files (Custos chunked format) are
passed through untouched for the ciphertext matcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from custos.core.manifest import FileEntry, Manifest, is_artifact_id
from custos.errors import InvalidInput

Form = Literal["plaintext", "ciphertext"]
FORMS: tuple[Form, ...] = ("plaintext", "ciphertext")


class FileRecord(Protocol):
    """What matching reads of one hashed file: the agent's scanner records and
    :class:`HashedFile` (what a control plane rebuilds from a report) both have it."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def form(self) -> Form: ...


@dataclass(frozen=True, slots=True)
class HashedFile:
    """One file of a host's inventory: where it is, its size and the SHA-256 of its bytes."""

    path: str
    size: int
    sha256: str
    form: Form = "plaintext"


@dataclass(frozen=True, slots=True, order=True)
class ArtifactFile:
    """One file of one artifact: the artifact id and the file's path in its manifest."""

    artifact_id: str
    path: str


@dataclass(frozen=True, slots=True)
class CompleteCopy:
    artifact_id: str
    root: str
    paths: tuple[str, ...]  # host paths, in manifest order


@dataclass(frozen=True, slots=True)
class PartialCopy:
    """Some files of an artifact under ``root`` at their relative paths.

    ``covered_by`` lists artifacts with a complete copy at the same root that
    contains every present file: artifacts that share files (the same tokenizer
    shard, say) make each other look partially present.
    """

    artifact_id: str
    root: str
    present: tuple[str, ...]  # manifest paths found
    missing: tuple[str, ...]  # manifest paths not found
    covered_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScatteredCopy:
    """All of an artifact's bytes are on the host, but not as one tree."""

    artifact_id: str
    files: tuple[tuple[str, str], ...]  # (manifest path, a host path holding those bytes)


@dataclass(frozen=True, slots=True)
class FileMatch:
    path: str
    size: int
    sha256: str
    refs: tuple[ArtifactFile, ...]  # every artifact file with these bytes
    renamed: bool  # not at any of those files' relative paths


@dataclass(frozen=True, slots=True)
class UnregisteredWeights:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class InventoryMatch:
    complete: tuple[CompleteCopy, ...]
    partial: tuple[PartialCopy, ...]
    scattered: tuple[ScatteredCopy, ...]
    files: tuple[FileMatch, ...]
    unregistered: tuple[UnregisteredWeights, ...]
    ciphertext: tuple[FileRecord, ...]

    def artifacts_present(self) -> set[str]:
        """Ids of artifacts with at least one non-empty file's bytes on the host."""
        return {ref.artifact_id for m in self.files for ref in m.refs}


def _root_for(host_path: str, relpath: str) -> str | None:
    """The directory that holds ``relpath`` at ``host_path``, or None if it does not end so."""
    suffix = "/" + relpath
    if not host_path.endswith(suffix):
        return None
    return host_path[: -len(suffix)] or "/"


class ManifestIndex:
    """Every registered file by SHA-256, built once per registry change.

    Raises InvalidInput if a key is not the artifact id of its manifest, or a
    value is not a Manifest.
    """

    def __init__(self, manifests: Mapping[str, Manifest]) -> None:
        self._manifests: dict[str, Manifest] = {}
        self._by_hash: dict[str, list[tuple[str, FileEntry]]] = {}
        for aid, manifest in manifests.items():
            if not isinstance(manifest, Manifest):
                raise InvalidInput(f"artifact {str(aid)[:16]}: want a Manifest, got {type(manifest).__name__}")
            if not isinstance(aid, str) or not is_artifact_id(aid):
                raise InvalidInput(f"bad artifact id {str(aid)[:80]!r}")
            # Attributing a copy to the wrong artifact is worse than refusing to match.
            if manifest.artifact_id != aid:
                raise InvalidInput(f"artifact {aid[:16]}: the manifest's id is {manifest.artifact_id[:16]}")
            self._manifests[aid] = manifest
            for entry in manifest.files:
                self._by_hash.setdefault(entry.sha256, []).append((aid, entry))

    def __len__(self) -> int:
        return len(self._manifests)

    def refs(self, sha256: str) -> list[tuple[str, FileEntry]]:
        return self._by_hash.get(sha256, [])

    def match(self, records: Iterable[FileRecord]) -> InventoryMatch:
        """Find copies of registered artifacts among ``records``. Raises InvalidInput."""
        recs = sorted(_checked(records), key=lambda r: r.path)
        ciphertext: list[FileRecord] = []
        unregistered: list[UnregisteredWeights] = []
        files: list[FileMatch] = []
        groups: dict[tuple[str, str], dict[str, str]] = {}  # (artifact, root) -> manifest path -> host path
        host_by_hash: dict[str, str] = {}  # first host path holding each matched digest
        touched: set[str] = set()
        for r in recs:
            if r.form == "ciphertext":
                ciphertext.append(r)
                continue
            refs = [(aid, e) for aid, e in self._by_hash.get(r.sha256, ()) if e.size == r.size]
            if not refs:
                if r.size > 0:
                    unregistered.append(UnregisteredWeights(r.path, r.size, r.sha256))
                continue
            positional = False
            for aid, entry in refs:
                root = _root_for(r.path, entry.path)
                if root is not None:
                    positional = True
                    groups.setdefault((aid, root), {})[entry.path] = r.path
            host_by_hash.setdefault(r.sha256, r.path)
            if r.size > 0:
                touched.update(aid for aid, _ in refs)
                refs_out = tuple(sorted(ArtifactFile(aid, e.path) for aid, e in refs))
                files.append(FileMatch(r.path, r.size, r.sha256, refs_out, renamed=not positional))

        complete: list[CompleteCopy] = []
        partial_groups: list[tuple[str, str, dict[str, str]]] = []
        for (aid, root), found in groups.items():
            manifest = self._manifests[aid]
            if len(found) == len(manifest.files):
                complete.append(CompleteCopy(aid, root, tuple(found[e.path] for e in manifest.files)))
            elif any(e.size > 0 and e.path in found for e in manifest.files):
                partial_groups.append((aid, root, found))

        complete_at: dict[str, list[tuple[str, set[str]]]] = {}
        for c in complete:
            complete_at.setdefault(c.root, []).append((c.artifact_id, set(c.paths)))
        partial: list[PartialCopy] = []
        for aid, root, found in partial_groups:
            manifest = self._manifests[aid]
            host_paths = set(found.values())
            covered = tuple(
                sorted(other for other, paths in complete_at.get(root, ()) if other != aid and host_paths <= paths)
            )
            partial.append(
                PartialCopy(
                    aid,
                    root,
                    present=tuple(e.path for e in manifest.files if e.path in found),
                    missing=tuple(e.path for e in manifest.files if e.path not in found),
                    covered_by=covered,
                )
            )

        has_complete = {c.artifact_id for c in complete}
        scattered: list[ScatteredCopy] = []
        for aid in sorted(touched - has_complete):
            manifest = self._manifests[aid]
            if all(e.size == 0 or e.sha256 in host_by_hash for e in manifest.files):
                scattered.append(
                    ScatteredCopy(
                        aid, tuple((e.path, host_by_hash.get(e.sha256, "")) for e in manifest.files if e.size > 0)
                    )
                )

        return InventoryMatch(
            complete=tuple(sorted(complete, key=lambda c: (c.artifact_id, c.root))),
            partial=tuple(sorted(partial, key=lambda p: (p.artifact_id, p.root))),
            scattered=tuple(scattered),
            files=tuple(files),
            unregistered=tuple(unregistered),
            ciphertext=tuple(ciphertext),
        )


def _checked(records: Iterable[FileRecord]) -> list[FileRecord]:
    out = []
    seen: set[str] = set()
    for r in records:
        if not (isinstance(getattr(r, "path", None), str) and isinstance(getattr(r, "size", None), int)
                and isinstance(getattr(r, "sha256", None), str) and getattr(r, "form", None) in FORMS):
            raise InvalidInput(f"want file records (path, size, sha256, form), got {type(r).__name__}")
        if r.path in seen:
            raise InvalidInput(f"duplicate record for {r.path!r}")
        seen.add(r.path)
        out.append(r)
    return out


def match_inventory(manifests: Mapping[str, Manifest], records: Iterable[FileRecord]) -> InventoryMatch:
    """One-shot :meth:`ManifestIndex.match`. Raises InvalidInput."""
    return ManifestIndex(manifests).match(records)
