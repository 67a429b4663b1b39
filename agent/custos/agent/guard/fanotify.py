"""fanotify(7) through ctypes: a group, its marks, its events and the answers to permission events.

One small layer over the C library's ``fanotify_init`` and ``fanotify_mark`` and
the two structures read from and written to a group's descriptor
(``struct fanotify_event_metadata``, ``struct fanotify_response``). No maintained
Python binding answers permission events in-process (``pyfanotify`` forks a reader
and only notifies), so the agent keeps these few calls here, with their own tests
(tests/agent/test_fanotify.py). Linux only; everything raises OSError with the
kernel's errno (EPERM without CAP_SYS_ADMIN, ENOENT for a path that is not there,
EINVAL for flags the kernel does not know).

Every event of a group opened without FAN_REPORT_FID carries an open descriptor of
the file (the kernel opened it for us, with FMODE_NONOTIFY: reading it raises no
further events). Whoever takes an event closes that descriptor; :meth:`Fanotify.answer`
does so after writing the answer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from typing import NamedTuple

# fanotify_init flags
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020

# fanotify_mark flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_FILESYSTEM = 0x00000100

# event mask bits
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_CLOSE_WRITE = 0x00000008
FAN_CLOSE_NOWRITE = 0x00000010
FAN_OPEN = 0x00000020
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
PERMISSION_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# answers
FAN_ALLOW = 0x01
FAN_DENY = 0x02

FANOTIFY_METADATA_VERSION = 3
FAN_NOFD = -1
AT_FDCWD = -100

# struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16,
# mask u64 (aligned), fd s32, pid s32 -- 24 bytes, no padding.
_META = struct.Struct("=IBBHQii")
# struct fanotify_response: fd s32, response u32.
_RESPONSE = struct.Struct("=iI")
READ_SIZE = 64 * _META.size * 16  # up to ~1000 events a read


class FanotifyEvent(NamedTuple):
    """One event: what happened (``mask``), the file (``fd``, or FAN_NOFD) and who (``pid``)."""

    mask: int
    fd: int
    pid: int

    @property
    def is_permission(self) -> bool:
        return bool(self.mask & PERMISSION_EVENTS)


def parse_events(buf: bytes) -> tuple[list[FanotifyEvent], str | None]:
    """The events in one read's bytes (pure), and why parsing stopped early (None: it did not).

    A record that is shorter than its header, runs past the buffer or has another
    metadata version ends the parse: what came before it is returned, and the
    descriptors of events after it cannot be known (the caller closes the group).
    """
    out: list[FanotifyEvent] = []
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < _META.size:
            return out, f"truncated event header at byte {pos}"
        event_len, vers, _res, meta_len, mask, fd, pid = _META.unpack_from(buf, pos)
        if vers != FANOTIFY_METADATA_VERSION:
            return out, f"fanotify metadata version {vers}, expected {FANOTIFY_METADATA_VERSION}"
        if meta_len < _META.size or event_len < meta_len or pos + event_len > len(buf):
            return out, f"bad event lengths at byte {pos} (event {event_len}, metadata {meta_len})"
        out.append(FanotifyEvent(mask, fd, pid))
        pos += event_len
    return out, None


def fd_path(fd: int) -> str:
    """The path the kernel shows for an event's descriptor ("" if it cannot say).

    A file deleted meanwhile ends with " (deleted)"; a file of another mount
    namespace shows the path seen from there.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # the C library is already loaded


class Fanotify:
    """One fanotify group. Thread-safe for reading in one thread while others answer and mark.

    ``flags`` are FAN_CLASS_* and friends (FAN_CLOEXEC and FAN_NONBLOCK are always
    added); ``event_flags`` are the open(2) flags of the descriptors events carry.
    Raises OSError (EPERM: no CAP_SYS_ADMIN; ENOSYS: no fanotify; EINVAL: flags).
    """

    def __init__(self, flags: int = FAN_CLASS_NOTIF,
                 event_flags: int = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC) -> None:
        libc = _libc()
        try:
            self._init = libc.fanotify_init
            self._mark = libc.fanotify_mark
        except AttributeError:
            raise OSError(errno.ENOSYS, "this C library has no fanotify") from None
        self._init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self._init.restype = ctypes.c_int
        self._mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self._mark.restype = ctypes.c_int
        if not isinstance(flags, int) or not isinstance(event_flags, int) or flags < 0 or event_flags < 0:
            raise OSError(errno.EINVAL, "fanotify flags must be non-negative integers")
        fd = self._init(flags | FAN_CLOEXEC | FAN_NONBLOCK, event_flags)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"fanotify_init: {os.strerror(e)}")
        self.fd: int = fd
        self.flags = flags
        self.closed = False
        # Answers, reads and the close take this lock: a descriptor number closed here may be
        # reused by the process at once, and must never receive a late answer or read.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.fd

    # - marks -

    def mark(self, path: str | os.PathLike[str], mask: int, *, flags: int = 0) -> None:
        """Add ``mask`` to the mark on ``path`` (an inode mark unless ``flags`` says mount or
        filesystem). Symlinks are not followed. Raises OSError (ENOENT, EINVAL, ENOSPC: too many marks)."""
        self._call_mark(FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | flags, mask, path)

    def unmark(self, path: str | os.PathLike[str], mask: int, *, flags: int = 0) -> None:
        """Remove ``mask`` from the mark on ``path``. Raises OSError (ENOENT: no such mark or path)."""
        self._call_mark(FAN_MARK_REMOVE | FAN_MARK_DONT_FOLLOW | flags, mask, path)

    def flush(self) -> None:
        """Remove every inode mark of this group."""
        self._call_mark(FAN_MARK_FLUSH, 0, None)

    def _call_mark(self, flags: int, mask: int, path: str | os.PathLike[str] | None) -> None:
        if not isinstance(mask, int) or mask < 0 or mask >= 1 << 64:
            raise OSError(errno.EINVAL, f"bad fanotify mask {mask!r}")
        raw = None
        if path is not None:
            raw = os.fsencode(path)
            if not raw or b"\0" in raw:
                raise OSError(errno.EINVAL, "fanotify_mark: bad path", os.fsdecode(raw))
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "fanotify group is closed")
            rc = self._mark(self.fd, flags, mask, AT_FDCWD, raw)
            e = ctypes.get_errno() if rc < 0 else 0
        if rc < 0:
            raise OSError(e, f"fanotify_mark: {os.strerror(e)}", os.fsdecode(raw) if raw else None)

    # - events -

    def read(self, timeout: float) -> list[FanotifyEvent]:
        """The events available within ``timeout`` seconds (maybe none). Raises OSError.

        A read whose bytes do not parse closes every descriptor it could find and
        raises OSError(EPROTO): the group can no longer be trusted.
        """
        if self.closed:
            raise OSError(errno.EBADF, "fanotify group is closed")
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            return []
        with self._lock:
            if self.closed:
                return []
            try:
                buf = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return []
        events, problem = parse_events(buf)
        if problem is not None:
            for ev in events:
                if ev.fd >= 0:
                    os.close(ev.fd)
            raise OSError(errno.EPROTO, f"fanotify: {problem}")
        return events

    def respond(self, fd: int, allow: bool) -> None:
        """Answer the permission event whose descriptor is ``fd``. Raises OSError (ENOENT: no
        such pending event — already answered, or not a permission event of this group)."""
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
            raise OSError(errno.EINVAL, f"bad event descriptor {fd!r}")
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "fanotify group is closed")
            os.write(self.fd, _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))

    def answer(self, ev: FanotifyEvent, allow: bool) -> None:
        """Answer a permission event (if it is one) and close its descriptor. Raises OSError
        from the answer; the descriptor is closed either way."""
        try:
            if ev.is_permission and ev.fd >= 0:
                self.respond(ev.fd, allow)
        finally:
            if ev.fd >= 0:
                os.close(ev.fd)

    def close(self) -> None:
        """Close the group. The kernel allows every permission event still unanswered."""
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)

    def __enter__(self) -> Fanotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
