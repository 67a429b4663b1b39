"""Canaries on this host: decoy weight files that look real, where any open is an incident.

The control plane asks for one (``PlantCanary`` on the custody stream: an id, a
directory, a model to imitate) or the agent's config lists directories (``[canary]
paths``; their ids are :func:`custos.core.canaries.config_canary_id` of host and
directory). :class:`Canaries` writes the plan of :func:`custos.core.canaries.plan_decoys`
— safetensors shards with valid headers, ``config.json``, ``tokenizer.json``, ... —
and answers ``CanaryPlanted`` with each file's path, size and SHA-256.

How a decoy is written, and why:

- **sparse**: each shard is ``ftruncate``d to its full size, then the header and
  a few islands of random tensor bytes (the first 256 KiB of data, the first 4 KiB
  of each tensor, the last 64 KiB) are written; the rest is a hole. A decoy of GBs
  costs a few MiB of disk, and its SHA-256 is computed once, from what was written,
  while planting (about a second per GiB: the budget ``[canary] max_bytes`` bounds it).
  The random bytes are shaped like small BF16/F16 values, so ``xxd`` of a shard's
  start, of any tensor's start or of its end shows plausible weights; a reader going
  deeper meets zeros — by then the open has raised the alarm;
- **never over anything**: a directory is only created below one of the agent's scan
  roots, each component opened with ``O_NOFOLLOW`` (a symlink anywhere below the root
  is refused), never inside the agent's own state or plaintext directories, and each
  file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing file or a
  symlink at a decoy's name refuses the whole canary, and a failure part way removes
  what was written. Being confined to scan roots also bounds what a compromised
  control plane can make an agent write: a few files of fixed names in a weights
  directory the operator chose;
- **readable**: files 0644 and directories 0755 (owned by the agent), like a shared
  model directory: an insider must be able to find and open them.

Canaries are never copies: the inventory leaves out a decoy whose bytes are still
those planted (:meth:`Canaries.hides`); one whose bytes changed is reported like any
file, and the control plane, which skips only files at a canary's paths with the
canary's SHA-256, raises an alert for it. Planted canaries are kept in
``STATE_DIR/canaries.json`` (0600) and reported on every connection.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custos.core.canaries import (
    DEFAULT_BYTES,
    MAX_BYTES,
    MIN_BYTES,
    DecoyFile,
    check_canary_dir,
    check_canary_id,
    config_canary_id,
    plan_decoys,
)
from custos.errors import CustosError, FailedPrecondition, InvalidInput
from custos.fs.private import write_private
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent.canary")

STATE_FILE = "canaries.json"
MAX_CANARIES = 100
FILE_MODE = 0o644
DIR_MODE = 0o755
_ZEROS = memoryview(bytes(1 << 20))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class CanaryRefused(FailedPrecondition):
    """A canary cannot be planted there (outside the scan roots, in a managed directory,
    over an existing file or through a symlink, ...)."""


@dataclass(frozen=True, slots=True)
class CanarySettings:
    """The ``[canary]`` config section: directories to plant at start, what they imitate, the size budget."""

    paths: tuple[str, ...] = ()
    model: str = ""
    max_bytes: int = DEFAULT_BYTES


def parse_canary_settings(path: Path, raw: Mapping[str, Any]) -> CanarySettings:
    """The ``[canary]`` table (types already checked). Relative paths are relative to the
    config file. Raises InvalidInput naming the key."""
    base = path.parent
    dirs = []
    for v in raw.get("paths", []):
        if not isinstance(v, str) or not v:
            raise InvalidInput(f"config {path}: canary.paths must be a list of non-empty strings")
        d = os.path.normpath(v if os.path.isabs(v) else str(base / v))
        try:
            dirs.append(check_canary_dir(d))
        except InvalidInput as exc:
            raise InvalidInput(f"config {path}: canary.paths: {exc}") from None
    if len(set(dirs)) != len(dirs):
        raise InvalidInput(f"config {path}: canary.paths lists a directory twice")
    model = raw.get("model", "")
    if len(model) > 128 or any(ord(c) < 0x20 for c in model):
        raise InvalidInput(f"config {path}: canary.model must be at most 128 printable characters")
    max_bytes = raw.get("max_bytes", DEFAULT_BYTES)
    if not MIN_BYTES <= max_bytes <= MAX_BYTES:
        raise InvalidInput(f"config {path}: canary.max_bytes must be between {MIN_BYTES} and {MAX_BYTES}")
    return CanarySettings(paths=tuple(dirs), model=model, max_bytes=max_bytes)


@dataclass(frozen=True, slots=True)
class Decoy:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Canary:
    id: str
    dir: str
    model: str
    origin: str  # control-plane | config
    files: tuple[Decoy, ...]
    planted_at_ns: int

    def report(self) -> custody_pb2.CanaryPlanted:
        return custody_pb2.CanaryPlanted(canary_id=self.id, dir=self.dir, files=[
            custody_pb2.CanaryFile(path=f.path, size=f.size, sha256=f.sha256) for f in self.files])

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "dir": self.dir, "model": self.model, "origin": self.origin,
                "planted_at_ns": self.planted_at_ns,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Canary:
        return Canary(id=check_canary_id(d["id"]), dir=check_canary_dir(d["dir"]), model=str(d.get("model", "")),
                      origin=str(d.get("origin", "control-plane")), planted_at_ns=int(d.get("planted_at_ns", 0)),
                      files=tuple(Decoy(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in d["files"]))


def tensor_bytes(n: int, dtype: str) -> bytes:
    """``n`` random bytes that read as little-endian BF16/F16 values of magnitude about 2^-9..2^-4
    (weights of a trained layer), not as noise: the high byte of each value carries a sign and
    a small exponent."""
    data = bytearray(os.urandom(n))
    table = _BF16_HIGH if dtype == "BF16" else _F16_HIGH
    data[1::2] = data[1::2].translate(table)
    return bytes(data)


# The high byte of a BF16 value: sign, then the top 7 bits of an exponent 118..123.
_BF16_HIGH = bytes((b & 0x80) | (59 + (b & 0x7F) % 3) for b in range(256))
# The high byte of an F16 value: sign, a 5-bit exponent 6..11, two mantissa bits.
_F16_HIGH = bytes((b & 0x80) | ((6 + ((b >> 2) & 0x1F) % 6) << 2) | (b & 3) for b in range(256))


def _hash_layout(size: int, pieces: Sequence[tuple[int, bytes]]) -> str:
    """SHA-256 of a file of ``size`` bytes holding ``pieces`` (offset, bytes; sorted, disjoint) and zeros."""
    h = hashlib.sha256()
    pos = 0
    for off, data in [*pieces, (size, b"")]:
        while pos < off:
            n = min(off - pos, len(_ZEROS))
            h.update(_ZEROS[:n])
            pos += n
        h.update(data)
        pos += len(data)
    return h.hexdigest()


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


class Canaries:
    """The canaries of this host: planting, what the inventory leaves out, what the guard watches.

    ``scan_roots``: where canaries may go; ``managed()``: the agent's own directories
    (state, plaintext), where they may not. Thread-safe: planting runs in a thread while the
    inventory asks :meth:`hides`.
    """

    def __init__(self, *, host: str, state_dir: Path, scan_roots: Iterable[Path],
                 managed: Callable[[], Iterable[Path]], settings: CanarySettings | None = None) -> None:
        self.host = host
        self.state_file = state_dir / STATE_FILE
        self.roots = tuple(os.path.normpath(os.path.abspath(str(r))) for r in scan_roots)
        self.managed = managed
        self.settings = settings or CanarySettings()
        self._lock = threading.Lock()
        self._planting = threading.Lock()  # one canary at a time: a request delivered twice finds the first done
        self._canaries: dict[str, Canary] = {}
        self._failed: dict[str, custody_pb2.CanaryPlanted] = {}  # config canaries that could not be planted
        self._pending: set[str] = set()  # decoy paths being written: hidden from the inventory meanwhile
        self._hidden: dict[str, str] = {}  # decoy path -> the SHA-256 planted

    # - state -

    def load(self) -> None:
        """Read ``STATE_DIR/canaries.json``. A missing file is no canary; an unreadable one is
        logged and ignored (the control plane still knows the canaries and skips their files)."""
        try:
            raw = self.state_file.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read the canary list", extra={"fields": {"file": str(self.state_file),
                                                                         "error": exc.strerror}})
            return
        try:
            items = [Canary.from_json(d) for d in json.loads(raw)["canaries"]]
        except (ValueError, KeyError, TypeError, CustosError) as exc:
            log.error("the canary list is unreadable; starting without it",
                      extra={"fields": {"file": str(self.state_file), "error": str(exc)[:200]}})
            return
        with self._lock:
            for c in items:
                self._add(c)

    def _add(self, c: Canary) -> None:
        self._canaries[c.id] = c
        for f in c.files:
            self._hidden[f.path] = f.sha256

    def _save(self) -> None:
        data = {"canaries": [c.as_json() for c in sorted(self._canaries.values(), key=lambda c: c.id)]}
        write_private(self.state_file, json.dumps(data, sort_keys=True, indent=1).encode())

    # - queries -

    def hides(self, path: str, sha256: str) -> bool:
        """Is this inventory record a decoy as planted (or being planted), to be left out of reports?"""
        with self._lock:
            return path in self._pending or self._hidden.get(path) == sha256

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._hidden)

    def watched(self) -> dict[str, str]:
        """Decoy path -> canary id, for every decoy file that is there now (for the guard)."""
        with self._lock:
            items = [(f.path, c.id) for c in self._canaries.values() for f in c.files]
        out = {}
        for path, cid in items:
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    out[path] = cid
        return out

    def reports(self) -> list[custody_pb2.CanaryPlanted]:
        """What to tell the control plane on each connection: every canary, and config canaries that failed."""
        with self._lock:
            return [c.report() for c in sorted(self._canaries.values(), key=lambda c: c.id)] + \
                [self._failed[k] for k in sorted(self._failed)]

    # - planting -

    def plant_configured(self) -> list[custody_pb2.CanaryPlanted]:
        """Plant every ``[canary] paths`` directory not planted yet (ids from host and directory)."""
        out = []
        for d in self.settings.paths:
            res = self.plant(config_canary_id(self.host, d), d, self.settings.model, origin="config")
            with self._lock:
                if res.error:
                    self._failed[res.canary_id] = res
                else:
                    self._failed.pop(res.canary_id, None)
            out.append(res)
        return out

    def plant(self, canary_id: str, path: str, model: str, *, origin: str = "control-plane"
              ) -> custody_pb2.CanaryPlanted:
        """Write the decoys of one canary (or, if this id is planted there already, report it
        again). Never raises: a refusal or failure is the answer's ``error``, and then nothing
        was left behind."""
        try:
            with self._planting:
                return self._plant(canary_id, path, model, origin)
        except CustosError as exc:
            log.warning("canary not planted", extra={"fields": {"canary_id": str(canary_id)[:40],
                                                                "path": str(path)[:300], "error": str(exc)}})
            return custody_pb2.CanaryPlanted(canary_id=str(canary_id)[:40], dir=str(path)[:1024], error=str(exc))
        except OSError as exc:
            msg = f"cannot plant the canary at {str(path)[:300]}: {exc.strerror or exc}"
            log.warning("canary not planted", extra={"fields": {"canary_id": str(canary_id)[:40], "error": msg}})
            return custody_pb2.CanaryPlanted(canary_id=str(canary_id)[:40], dir=str(path)[:1024], error=msg)

    def _plant(self, canary_id: str, path: str, model: str, origin: str) -> custody_pb2.CanaryPlanted:
        check_canary_id(canary_id)
        d = check_canary_dir(path)
        if not isinstance(model, str) or len(model) > 128 or any(ord(c) < 0x20 for c in model):
            raise InvalidInput("canary model name: at most 128 printable characters")
        with self._lock:
            known = self._canaries.get(canary_id)
            if known is not None:
                if known.dir != d:
                    raise CanaryRefused(f"canary {canary_id} is planted at {known.dir}, not {d}")
                return known.report()  # asked again (a lost answer, a reconnect): the same files
            if any(c.dir == d for c in self._canaries.values()):
                raise CanaryRefused(f"another canary is planted at {d}")
            if len(self._canaries) >= MAX_CANARIES:
                raise CanaryRefused(f"this host already has {MAX_CANARIES} canaries")
        root = self._root_of(d)
        self._check_not_managed(d)
        plan = plan_decoys(model, max_bytes=self.settings.max_bytes, seed=canary_id.encode())
        names = [f.name for f in plan.files]
        targets = [f"{d}/{n}" for n in names]
        with self._lock:
            self._pending.update(targets)
        created_dirs: list[str] = []
        written: list[str] = []
        dfd = -1
        try:
            dfd = self._open_dir(root, d, created_dirs)
            for n in names:  # all or nothing: look before writing the first one
                with contextlib.suppress(FileNotFoundError):
                    os.stat(n, dir_fd=dfd, follow_symlinks=False)
                    raise CanaryRefused(f"{d}/{n} exists: a canary never overwrites a file")
            decoys = []
            for f in plan.files:
                decoys.append(Decoy(f"{d}/{f.name}", f.size, self._write(dfd, f, written)))
            os.fsync(dfd)
            canary = Canary(id=canary_id, dir=d, model=model, origin=origin, files=tuple(decoys),
                            planted_at_ns=time.time_ns())
            with self._lock:
                self._add(canary)
                try:
                    self._save()
                except OSError:
                    self._canaries.pop(canary_id, None)
                    for t in targets:
                        self._hidden.pop(t, None)
                    raise
        except BaseException:
            self._undo(dfd, written, created_dirs)
            raise
        finally:
            if dfd >= 0:
                os.close(dfd)
            with self._lock:
                self._pending.difference_update(targets)
        log.warning("canary planted", extra={"fields": {
            "canary_id": canary_id, "dir": d, "files": len(decoys), "architecture": plan.architecture.family,
            "layers": plan.architecture.layers, "apparent_bytes": plan.total_size}})
        return canary.report()

    def _root_of(self, d: str) -> str:
        for r in self.roots:
            if _under(d, r):
                return r
        raise CanaryRefused(f"{d} is under none of this agent's scan roots: canaries go where weights are "
                            "inventoried")

    def _check_not_managed(self, d: str) -> None:
        real = os.path.realpath(d)
        for m in self.managed():
            base = os.path.normpath(os.path.abspath(str(m)))
            if _under(d, base) or _under(real, os.path.realpath(base)):
                raise CanaryRefused(f"{d} is inside the agent's own directory {base}")

    @staticmethod
    def _open_dir(root: str, d: str, created: list[str]) -> int:
        """An fd of ``d``, created below ``root`` as needed; no component below the root may be a symlink."""
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise CanaryRefused(f"scan root {root} cannot be opened: {exc.strerror}") from None
        rel = d[len(root):].strip("/")
        cur = root
        try:
            for part in [p for p in rel.split("/") if p]:
                cur = f"{cur.rstrip('/')}/{part}"
                made = False
                try:
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                    created.append(cur)
                    made = True
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise CanaryRefused(f"{cur} is a symlink or not a directory: refused") from None
                    raise
                os.close(fd)
                fd = nfd
                if made:
                    os.fchmod(fd, DIR_MODE)  # whatever the umask: others must be able to look inside
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _write(dfd: int, f: DecoyFile, written: list[str]) -> str:
        """Create one decoy (O_EXCL, O_NOFOLLOW) and return its SHA-256."""
        try:
            fd = os.open(f.name, _CREATE, FILE_MODE, dir_fd=dfd)
        except FileExistsError:
            raise CanaryRefused(f"{f.name} appeared while planting: a canary never overwrites a file") from None
        written.append(f.name)
        try:
            os.fchmod(fd, FILE_MODE)
            pieces = [(0, f.head)] + [(off, tensor_bytes(n, f.dtype)) for off, n in f.islands]
            if f.size > len(f.head):
                os.ftruncate(fd, f.size)  # a hole: no disk for the zeros
            for off, data in pieces:
                view = memoryview(data)
                while view:
                    view = view[os.pwrite(fd, view, off + len(data) - len(view)):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return _hash_layout(f.size, pieces)

    @staticmethod
    def _undo(dfd: int, written: list[str], created_dirs: list[str]) -> None:
        if dfd >= 0:
            for n in written:
                with contextlib.suppress(OSError):
                    os.unlink(n, dir_fd=dfd)
        for p in reversed(created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(p)
