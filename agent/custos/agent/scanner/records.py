"""What a scan is told and what it yields: the scan configuration and the inventory's records.

:class:`ScanConfig` says which roots to walk, what to leave out and what counts
as weight-like; :class:`FileRecord`, :class:`ScanProblem`, :class:`ScanStats`
and :class:`ScanResult` are what a scan hands back. Pure data and path rules:
nothing here touches the disk.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from custos.agent.scanner.formats import SNIFF_MIN_SIZE
from custos.core.matching import WEIGHT_SUFFIXES, Form, weight_like_name
from custos.errors import InvalidInput

# Any file this large is hashed whatever its name: a registered file renamed to
# notes.txt is found by its hash. 1 MiB puts every real weight shard above it;
# the cost (docs/agent.md, bench/scan_bench.py) is one hash per large file, once.
DEFAULT_MIN_SIZE = 1 << 20
# Pseudo file systems hold no weights and reading some of their files has side effects.
DEFAULT_EXCLUDE: tuple[str, ...] = ("/proc", "/sys")
# The first bytes of every file in the Custos chunked ciphertext format
# (custos.core.chunked.MAGIC; a test keeps the two equal). Not imported, so the
# scanner does not depend on the cipher module.
CUSTOS_MAGIC = b"\x89CUSTOS\n"

ProblemKind = Literal["missing", "unreadable", "loop", "vanished", "changed", "error", "cache"]
Hasher = Callable[[str], tuple[int, str]]
CacheKey = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanConfig:
    """What to scan and what counts as weight-like.

    ``exclude`` holds ``fnmatch`` patterns tested against both the full path and
    the base name of every entry (``"/data/scratch"``, ``"*.tmp"``, ``".git"``);
    an excluded directory is not entered. A file is weight-like when its name
    ends with one of ``patterns`` (case-insensitive), or carries one before
    another suffix (``model.safetensors.bak``), or, if ``min_size`` > 0, when it
    is at least ``min_size`` bytes; with ``sniff``, also when its first bytes
    begin a weight format (:mod:`.formats`). Raises InvalidInput on bad values.
    """

    roots: Sequence[Path | str]
    exclude: Sequence[str] = DEFAULT_EXCLUDE
    patterns: tuple[str, ...] = WEIGHT_SUFFIXES
    min_size: int = DEFAULT_MIN_SIZE
    workers: int = field(default_factory=_default_workers)
    follow_symlinks: bool = False
    magic: bytes = CUSTOS_MAGIC
    sniff: bool = True
    low_priority: bool = True
    _exclude_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.roots, str | Path) or not self.roots:
            raise InvalidInput("scan config: roots must be a non-empty list of directories")
        roots = tuple(Path(os.path.abspath(os.fspath(r))) for r in self.roots)
        object.__setattr__(self, "roots", roots)
        if isinstance(self.exclude, str):
            raise InvalidInput("scan config: exclude must be a list of patterns, not one string")
        if not all(isinstance(p, str) and p for p in self.exclude):
            raise InvalidInput("scan config: exclude patterns must be non-empty strings")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.exclude:
            # One compiled alternation: the walk tests every entry against it twice.
            joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.exclude)
            object.__setattr__(self, "_exclude_re", re.compile(joined))
        if isinstance(self.patterns, str):
            raise InvalidInput("scan config: patterns must be a tuple of suffixes, not one string")
        pats = []
        for p in self.patterns:
            if not isinstance(p, str) or not p.strip("."):
                raise InvalidInput(f"scan config: bad suffix pattern {p!r}")
            pats.append(p.lower() if p.startswith(".") else "." + p.lower())
        object.__setattr__(self, "patterns", tuple(pats))
        if not isinstance(self.min_size, int) or isinstance(self.min_size, bool) or self.min_size < 0:
            raise InvalidInput("scan config: min_size must be an int >= 0 (0 disables the size rule)")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise InvalidInput("scan config: workers must be an int >= 1")
        if not isinstance(self.magic, bytes) or not 1 <= len(self.magic) <= 64:
            raise InvalidInput("scan config: magic must be 1 to 64 bytes")
        if not isinstance(self.sniff, bool):
            raise InvalidInput("scan config: sniff must be true or false")

    @property
    def root_paths(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.roots)

    def is_excluded(self, path: str, name: str | None = None) -> bool:
        rx = self._exclude_re
        if rx is None:
            return False
        base = name if name is not None else os.path.basename(path)
        return rx.match(path) is not None or rx.match(base) is not None

    def is_weight_like(self, name: str, size: int) -> bool:
        """By name or size alone (no I/O); :meth:`should_sniff` says whether to look at the bytes."""
        if weight_like_name(name, self.patterns):
            return True
        return self.min_size > 0 and size >= self.min_size

    def should_sniff(self, size: int) -> bool:
        """Is a file of ``size`` bytes that is not weight-like by name or size worth reading the head of?"""
        return self.sniff and size >= SNIFF_MIN_SIZE


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One weight-like file on this host and the SHA-256 of its bytes."""

    path: str
    size: int
    sha256: str
    device: int
    inode: int
    mtime_ns: int
    ctime_ns: int
    form: Form = "plaintext"

    @property
    def key(self) -> CacheKey:
        return (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns)


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """Something the scan could not inventory; the scan went on without it."""

    path: str
    kind: ProblemKind
    message: str


@dataclass(frozen=True, slots=True)
class ScanStats:
    files_seen: int = 0  # regular files looked at
    candidates: int = 0  # of those, weight-like (by name, size or first bytes)
    cache_hits: int = 0
    hashed: int = 0  # files handed to the hasher (hard links of one inode: once)
    sniffed: int = 0  # files whose first bytes were read because neither name nor size decided
    sniff_found: int = 0  # of those, the start of a weight format
    sniff_known: int = 0  # files the cache knows are no weights: not read again
    bytes_hashed: int = 0
    symlinks_skipped: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The host's inventory after a scan (every known record, sorted by path)."""

    records: tuple[FileRecord, ...]
    problems: tuple[ScanProblem, ...]
    stats: ScanStats

    def by_path(self) -> dict[str, FileRecord]:
        return {r.path: r for r in self.records}


def is_under(path: str, prefix: str) -> bool:
    """Is ``path`` the directory ``prefix`` or below it? (pure; compares whole components)"""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")
