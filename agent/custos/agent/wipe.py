"""Wiping plaintext the agent manages: overwrite with zeros, fsync, unlink; and path checks."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from custos.errors import FailedPrecondition

WIPE_BLOCK = 1 << 20


def wipe_file(path: str) -> None:
    """Overwrite a regular file with zeros, fsync, unlink. Other entries are unlinked. Raises OSError."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode) and st.st_size > 0:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            zeros = bytes(min(WIPE_BLOCK, st.st_size))
            left = st.st_size
            while left > 0:
                n = os.write(fd, zeros[: min(len(zeros), left)])
                left -= n
            os.fsync(fd)
        finally:
            os.close(fd)
    os.unlink(path)


def wipe_tree(top: Path) -> tuple[list[str], list[str]]:
    """Wipe every file under ``top`` (never following symlinks), then remove the directories.

    Returns (files wiped, failures as "path: why"). A missing ``top`` is nothing to do.
    On tmpfs (/dev/shm) overwriting clears the pages; on disks with remapping
    (SSDs, copy-on-write file systems) it is best effort, which is why plaintext
    goes to /dev/shm when it fits.
    """
    wiped: list[str] = []
    failed: list[str] = []
    if not os.path.lexists(top):
        return wiped, failed
    if os.path.islink(top) or not os.path.isdir(top):
        try:
            wipe_file(str(top))
            wiped.append(str(top))
        except OSError as exc:
            failed.append(f"{top}: {exc.strerror}")
        return wiped, failed
    for dirpath, dirnames, filenames in os.walk(top, topdown=False, followlinks=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                wipe_file(p)
                wiped.append(p)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append(f"{p}: {exc.strerror}")
        for name in dirnames:
            p = os.path.join(dirpath, name)
            try:
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append(f"{p}: {exc.strerror}")
    try:
        os.rmdir(top)
    except FileNotFoundError:
        pass
    except OSError as exc:
        failed.append(f"{top}: {exc.strerror}")
    return wiped, failed


_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def check_inside(base: Path, path: Path) -> Path:
    """``path`` resolved, if it lies strictly inside ``base``. Raises FailedPrecondition otherwise.

    Every wipe goes through this: a bug must never turn into deleting outside
    the agent's own plaintext directories.
    """
    b = os.path.realpath(base)
    p = os.path.realpath(path)
    if not p.startswith(b.rstrip("/") + "/") or not _SAFE.match(os.path.basename(p)):
        raise FailedPrecondition(f"refusing to wipe {path}: not inside {base}")
    return Path(p)
