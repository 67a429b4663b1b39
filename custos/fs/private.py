"""The one writer of private files: keys, identities, resume state, replay records.

:func:`write_private` gives every caller the strongest guarantees at once:

- the bytes exist only with ``mode`` (0600 by default) from the moment the file is
  created: it is opened ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a fresh temporary
  name in the target's directory, and ``fchmod`` makes the mode exact whatever the
  umask;
- the file is fsynced before it takes the target's name, so a crash leaves the old
  contents or the new ones, never a torn file;
- the name changes atomically (``rename``), or, with ``exclusive=True``, by
  ``link`` so that an existing target is never replaced (``FileExistsError``);
- the directory is fsynced, so the rename itself survives a power loss;
- on any failure the temporary file is removed.

:func:`private_dir` makes (or checks) a directory only its owner can enter.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from custos.errors import FailedPrecondition

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_private(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *,
                  mode: int = 0o600, exclusive: bool = False) -> None:
    """Durably and atomically make ``path`` hold ``data``, readable only as ``mode`` allows.

    ``mode`` 0o644 is for public material (certificates, public keys) that wants the
    same durability. Raises FileExistsError (``exclusive`` and ``path`` exists) and
    OSError; the target is unchanged when it raises.
    """
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, _CREATE, mode & 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, target)  # fails if the target exists: never replaced
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` (and missing parents) 0700, or check an existing one: a directory owned
    by this user, group and others' permissions removed. Raises FailedPrecondition, OSError."""
    p = Path(path)
    with contextlib.suppress(FileExistsError):  # exists: checked below, whatever it is
        p.mkdir(parents=True, mode=0o700)
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"{p} is not a directory")
    if st.st_uid != os.geteuid():
        raise FailedPrecondition(f"{p} is owned by uid {st.st_uid}, not by this process's user (uid {os.geteuid()})")
    if st.st_mode & 0o077:
        os.chmod(p, 0o700)
    return p


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
