"""A run's private directory: where its plaintext may go, what the pulled files are, wiping it.

A run's directory is ``/dev/shm/custos-agent-HOST/RUN`` when /dev/shm exists and
has room, else ``STATE_DIR/runs/RUN`` (or ``PLAINTEXT_DIR/RUN`` when configured);
the artifact is pulled into its ``artifact`` subdirectory. Each base is 0711 and
owned by the agent; each run directory inside it is 0700.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
from pathlib import Path

from custos.agent.processes import inspect_holders, stop_processes
from custos.agent.scanner import FileRecord
from custos.agent.wipe import check_inside, wipe_tree
from custos.core.manifest import Manifest
from custos.errors import FailedPrecondition

log = logging.getLogger("custos.agent.workloads")

SHM = Path("/dev/shm")  # noqa: S108 - RAM-backed; the base is created 0711 and its owner checked
SHM_HEADROOM = 64 << 20
WORKLOAD_ID = re.compile(r"^w-[0-9a-f]{16}$")


class PlaintextDirs:
    """The directories runs may put plaintext in, and wiping runs' directories there. Thread-safe."""

    def __init__(self, *, name: str, state_dir: Path, plaintext_dir: Path | None, remember: int) -> None:
        self.name = name
        self.state_dir = state_dir
        self.plaintext_dir = plaintext_dir
        self.remember = remember
        self._wipe_lock = threading.Lock()
        self._wiped: dict[str, list[str]] = {}

    def bases(self) -> list[Path]:
        """Every directory runs may use (for exclusion from scans and start-up cleanup)."""
        if self.plaintext_dir is not None:
            return [self.plaintext_dir]
        return [SHM / f"custos-agent-{self.name}", self.state_dir / "runs"]

    def base_for(self, need: int) -> Path:
        """The base for a run of ``need`` bytes: RAM when it has room. Raises FailedPrecondition."""
        if self.plaintext_dir is not None:
            base = self.plaintext_dir
        else:
            base = self.state_dir / "runs"
            try:
                if SHM.is_dir() and shutil.disk_usage(SHM).free >= need + SHM_HEADROOM:
                    base = SHM / f"custos-agent-{self.name}"
            except OSError:
                pass
        return _private_base(base)

    def wipe(self, run_dir: Path) -> tuple[list[str], list[str]]:
        """Wipe one run directory (must lie inside a base). Returns (wiped, failures).

        Idempotent: a workload's exit and a halt may both wipe the same run; the
        second caller gets the first one's list of wiped files, so a halt's
        evidence is complete whichever came first.
        """
        key = str(run_dir)
        with self._wipe_lock:
            for base in self.bases():
                try:
                    path = check_inside(base, run_dir)
                except FailedPrecondition:
                    continue
                wiped, failures = wipe_tree(path)
                done = self._wiped.setdefault(key, [])
                done.extend(wiped)
                if len(self._wiped) > self.remember:
                    self._wiped.pop(next(iter(self._wiped)))
                return list(done), failures
        return [], [f"{run_dir}: not inside the agent's plaintext directories; left alone"]

    def cleanup_leftovers(self, stop_grace: float) -> list[str]:
        """Wipe run directories a previous agent left (it died before cleaning up), stopping
        whatever still holds their files first. Returns the directories wiped."""
        wiped = []
        for base in self.bases():
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for e in entries:
                if not WORKLOAD_ID.match(e.name):
                    continue
                paths: list[str] = []
                for dirpath, _dirs, files in os.walk(e.path):
                    paths.extend(os.path.join(dirpath, f) for f in files)
                holders = {h.pid for h in inspect_holders(paths).holds} if paths else set()
                if holders:
                    stop_processes(sorted(holders), min(stop_grace, 5.0))
                _files, failures = self.wipe(Path(e.path))
                wiped.append(e.path)
                log.warning("wiped plaintext left by an earlier agent run", extra={"fields": {
                    "dir": e.path, "stopped": sorted(holders), "failures": failures[:10]}})
        return wiped


def file_records(artifact_dir: Path, manifest: Manifest) -> list[FileRecord]:
    """The pulled files as the inventory reports them (managed by a run)."""
    records = []
    for f in manifest.files:
        p = artifact_dir / f.path
        st = os.stat(p, follow_symlinks=False)
        records.append(FileRecord(path=str(p), size=st.st_size, sha256=f.sha256, device=st.st_dev,
                                  inode=st.st_ino, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns))
    return records


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """Give a run's directory and everything in it to the user the run is for."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def _private_base(base: Path) -> Path:
    """Create (0711: others may traverse to their own run, not list) or check the base. Raises FailedPrecondition."""
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o711)
        st = os.lstat(base)
    except OSError as exc:
        raise FailedPrecondition(f"cannot create the plaintext directory {base}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        # Someone else made it (e.g. in /dev/shm, which everyone can write): never put plaintext there.
        raise FailedPrecondition(f"{base} exists and is not a directory owned by this agent: refusing to use it")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(base, 0o711)  # noqa: S103 - traverse only: each run dir inside is 0700
    return base
