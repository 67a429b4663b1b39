"""Match a host's file inventory against registered artifact manifests (pure).

Custody is by content: a host file whose SHA-256 and size are those of a
registered file holds that artifact's bytes, whatever its name, directory or
extension. Each host file is looked up in an index built once from all
manifests, so matching costs O(files x depth + matches), not O(files x
manifests). Files are grouped into :class:`HostCopy` findings, one per
(artifact, location):

1. **in place** — a file at one of the artifact's relative paths puts a copy at
   what remains of its host path once that relative path is cut off its end
   (``/mnt/y/sub/a.bin`` holding ``sub/a.bin`` puts a copy at ``/mnt/y``);
2. **by content** — a file with the artifact's bytes at none of its relative
   paths (renamed, moved, another extension) joins the deepest in-place copy of
   that artifact whose directory holds it and still lacks those bytes; else the
   copy in its own directory; else — that directory's copy already has those
   bytes — it is a copy on its own, located at the file itself.

A copy lists which manifest files it holds and which it lacks (n of m), and
which host files hold their bytes under another name; it is complete when it
holds every file that has bytes. Zero-byte files carry no weight bytes and are
ignored: they never make a copy complete, partial or present. Two names of one
inode (hard links) are two host paths, so two places holding the bytes.
Ciphertext files (Custos chunked format) are passed through untouched.

The other findings: :class:`ScatteredCopy` (no complete copy, but every file's
bytes are on the host somewhere), :class:`FileMatch` (each host file whose bytes
belong to some artifact) and :class:`UnregisteredWeights` (files that match
nothing; :func:`weight_like_name` says which of them are named like weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from custos.core.manifest import FileEntry, Manifest, is_artifact_id
from custos.errors import InvalidInput

Form = Literal["plaintext", "ciphertext"]
FORMS: tuple[Form, ...] = ("plaintext", "ciphertext")

# Suffixes of the weight formats in use; the agent's default name rule and the
# control plane's test of whether an unregistered file is named like weights.
WEIGHT_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".onnx",
    ".h5",
    ".msgpack",
    ".npz",
)


def weight_like_name(name: str, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> bool:
    """Does the base name ``name`` end with a weight suffix, or carry one before another suffix?

    ``model.safetensors``, ``W.GGUF`` and ``model.safetensors.bak`` do; ``notes.txt``
    does not. ``suffixes`` are lower case, each starting with a dot.
    """
    low = name.lower()
    return low.endswith(suffixes) or any(s + "." in low for s in suffixes)


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
class HostCopy:
    """Bytes of one artifact at one location on the host, found by content.

    ``location`` is a directory (the root the manifest's paths hang from, or
    the directory of files found under other names) or, for a file whose
    directory already holds a copy with its bytes, that file. ``covered_by``
    lists artifacts with a complete copy at the same location that holds every
    file of this one: artifacts that share files (the same tokenizer shard, say)
    make each other look partially present.
    """

    artifact_id: str
    location: str
    files: tuple[tuple[str, str], ...]  # (manifest path, host path), in manifest order
    missing: tuple[str, ...]  # manifest paths (of files with bytes) not found here
    renamed: tuple[str, ...] = ()  # host paths of ``files`` not at their manifest path under location
    covered_by: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def total(self) -> int:
        """How many of the artifact's files have bytes (the m of "n of m")."""
        return len(self.files) + len(self.missing)

    @property
    def host_paths(self) -> tuple[str, ...]:
        return tuple(p for _, p in self.files)


@dataclass(frozen=True, slots=True)
class ScatteredCopy:
    """All of an artifact's bytes are on the host, but no copy holds them all."""

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
    copies: tuple[HostCopy, ...]  # sorted by (artifact, location)
    scattered: tuple[ScatteredCopy, ...]
    files: tuple[FileMatch, ...]
    unregistered: tuple[UnregisteredWeights, ...]
    ciphertext: tuple[FileRecord, ...]

    @property
    def complete(self) -> tuple[HostCopy, ...]:
        return tuple(c for c in self.copies if c.complete)

    @property
    def partial(self) -> tuple[HostCopy, ...]:
        return tuple(c for c in self.copies if not c.complete)

    def artifacts_present(self) -> set[str]:
        """Ids of artifacts with at least one non-empty file's bytes on the host."""
        return {c.artifact_id for c in self.copies}


def _root_for(host_path: str, relpath: str) -> str | None:
    """The directory that holds ``relpath`` at ``host_path``, or None if it does not end so."""
    suffix = "/" + relpath
    if not host_path.endswith(suffix):
        return None
    return host_path[: -len(suffix)] or "/"


def _parent(path: str) -> str:
    head = path.rstrip("/").rpartition("/")[0]
    return head or "/"


def _ancestors(path: str) -> Iterator[str]:
    """The directories above ``path``, nearest first, ending with ``/``."""
    p = path
    while p not in ("/", ""):
        p = _parent(p)
        yield p


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
        slots: dict[tuple[str, str], dict[str, str]] = {}  # (artifact, location) -> manifest path -> host path
        loose: list[tuple[str, str, list[FileEntry]]] = []  # (host path, artifact, its entries with these bytes)
        host_by_hash: dict[str, str] = {}  # first host path holding each matched digest
        for r in recs:
            if r.form == "ciphertext":
                ciphertext.append(r)
                continue
            refs = [(aid, e) for aid, e in self._by_hash.get(r.sha256, ()) if e.size == r.size]
            if not refs:
                if r.size > 0:
                    unregistered.append(UnregisteredWeights(r.path, r.size, r.sha256))
                continue
            if r.size == 0:
                continue  # no weight bytes: an empty file matches every empty file
            host_by_hash.setdefault(r.sha256, r.path)
            by_artifact: dict[str, list[FileEntry]] = {}
            for aid, entry in refs:
                by_artifact.setdefault(aid, []).append(entry)
            in_place_any = False
            for aid, entries in by_artifact.items():
                in_place = False
                for entry in entries:
                    root = _root_for(r.path, entry.path)
                    if root is not None:
                        in_place = True
                        slots.setdefault((aid, root), {})[entry.path] = r.path
                if in_place:
                    in_place_any = True
                else:
                    loose.append((r.path, aid, entries))
            refs_out = tuple(sorted(ArtifactFile(aid, e.path) for aid, e in refs))
            files.append(FileMatch(r.path, r.size, r.sha256, refs_out, renamed=not in_place_any))

        renamed = self._place_loose(slots, loose)
        copies = self._copies(slots, renamed)
        return InventoryMatch(
            copies=copies,
            scattered=self._scattered(copies, files, host_by_hash),
            files=tuple(files),
            unregistered=tuple(unregistered),
            ciphertext=tuple(ciphertext),
        )

    @staticmethod
    def _place_loose(
        slots: dict[tuple[str, str], dict[str, str]], loose: list[tuple[str, str, list[FileEntry]]]
    ) -> dict[tuple[str, str], list[str]]:
        """Give every file found under another name a place in a copy (see the module doc)."""
        in_place = set(slots)
        renamed: dict[tuple[str, str], list[str]] = {}
        for path, aid, entries in loose:
            here = _parent(path)
            candidates = [d for d in _ancestors(path) if (aid, d) in in_place]
            if here not in candidates:
                candidates.append(here)
            candidates.append(path)
            for loc in candidates:
                group = slots.setdefault((aid, loc), {})
                free = next((e for e in entries if e.path not in group), None)
                if free is not None:
                    group[free.path] = path
                    renamed.setdefault((aid, loc), []).append(path)
                    break
        return renamed

    def _copies(
        self, slots: dict[tuple[str, str], dict[str, str]], renamed: dict[tuple[str, str], list[str]]
    ) -> tuple[HostCopy, ...]:
        found: list[HostCopy] = []
        for (aid, loc), held in slots.items():
            if not held:
                continue
            manifest = self._manifests[aid]
            found.append(HostCopy(
                aid,
                loc,
                files=tuple((e.path, held[e.path]) for e in manifest.files if e.size > 0 and e.path in held),
                missing=tuple(e.path for e in manifest.files if e.size > 0 and e.path not in held),
                renamed=tuple(sorted(renamed.get((aid, loc), ()))),
            ))
        complete_at: dict[str, list[tuple[str, set[str]]]] = {}
        for c in found:
            if c.complete:
                complete_at.setdefault(c.location, []).append((c.artifact_id, set(c.host_paths)))
        out = []
        for c in found:
            if not c.complete:
                mine = set(c.host_paths)
                at = complete_at.get(c.location, ())
                covered = tuple(sorted(other for other, paths in at if other != c.artifact_id and mine <= paths))
                if covered:
                    c = HostCopy(c.artifact_id, c.location, c.files, c.missing, c.renamed, covered)
            out.append(c)
        return tuple(sorted(out, key=lambda c: (c.artifact_id, c.location)))

    def _scattered(
        self, copies: tuple[HostCopy, ...], files: list[FileMatch], host_by_hash: dict[str, str]
    ) -> tuple[ScatteredCopy, ...]:
        touched = {ref.artifact_id for f in files for ref in f.refs}
        has_complete = {c.artifact_id for c in copies if c.complete}
        scattered: list[ScatteredCopy] = []
        for aid in sorted(touched - has_complete):
            manifest = self._manifests[aid]
            if all(e.size == 0 or e.sha256 in host_by_hash for e in manifest.files):
                scattered.append(ScatteredCopy(
                    aid, tuple((e.path, host_by_hash[e.sha256]) for e in manifest.files if e.size > 0)))
        return tuple(scattered)


def _checked(records: Iterable[FileRecord]) -> list[FileRecord]:
    out = []
    seen: set[str] = set()
    for r in records:
        path = getattr(r, "path", None)
        if not (isinstance(path, str) and isinstance(getattr(r, "size", None), int)
                and isinstance(getattr(r, "sha256", None), str) and getattr(r, "form", None) in FORMS):
            raise InvalidInput(f"want file records (path, size, sha256, form), got {type(r).__name__}")
        # Locations are cut from host paths: a relative path would place a copy nowhere.
        if not path.startswith("/") or "\x00" in path:
            raise InvalidInput(f"want an absolute host path, got {path[:80]!r}")
        if path in seen:
            raise InvalidInput(f"duplicate record for {path!r}")
        seen.add(path)
        out.append(r)
    return out


def match_inventory(manifests: Mapping[str, Manifest], records: Iterable[FileRecord]) -> InventoryMatch:
    """One-shot :meth:`ManifestIndex.match`. Raises InvalidInput."""
    return ManifestIndex(manifests).match(records)
