"""The ctypes fanotify layer against the real kernel: groups, marks, permission answers, bad input.

Runs as root (CI does): a permission group needs CAP_SYS_ADMIN. Every opener is a real
process (``cat``), blocked in open(2) until this test answers.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from custos.agent.guard.fanotify import (
    FAN_CLASS_CONTENT,
    FAN_CLASS_NOTIF,
    FAN_EVENT_ON_CHILD,
    FAN_OPEN,
    FAN_OPEN_PERM,
    FANOTIFY_METADATA_VERSION,
    Fanotify,
    FanotifyEvent,
    fd_path,
    parse_events,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="fanotify permission groups need root (CI runs as root)")
CAT = shutil.which("cat") or "/bin/cat"


@pytest.fixture
def group() -> Iterator[Fanotify]:
    g = Fanotify(FAN_CLASS_CONTENT)
    yield g
    g.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    f = tmp_path / "weights" / "model.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"plaintext weights")
    return f


class Opener:
    """``cat FILE`` in a thread: it blocks in open(2) until the group answers."""

    def __init__(self, path: Path) -> None:
        self.result: subprocess.CompletedProcess[bytes] | None = None
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self.thread.start()

    def _run(self, path: Path) -> None:
        self.result = subprocess.run([CAT, str(path)], capture_output=True, timeout=30, check=False)

    def wait(self) -> subprocess.CompletedProcess[bytes]:
        self.thread.join(30)
        assert self.result is not None
        return self.result


def next_events(g: Fanotify, timeout: float = 10.0) -> list[FanotifyEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = g.read(0.2)
        if evs:
            return evs
    raise AssertionError("no fanotify event")


@pytest.mark.parametrize(("allow", "code", "out"), [(True, 0, b"plaintext weights"), (False, 1, b"")])
def test_a_permission_answer_decides_the_open(group: Fanotify, secret: Path, allow: bool, code: int,
                                              out: bytes) -> None:
    group.mark(secret, FAN_OPEN_PERM)
    op = Opener(secret)
    ev = next_events(group)[0]
    assert ev.is_permission and ev.mask & FAN_OPEN_PERM
    assert fd_path(ev.fd) == str(secret)
    assert Path(f"/proc/{ev.pid}/exe").resolve() == Path(CAT).resolve()  # the opener, still waiting
    group.answer(ev, allow)
    res = op.wait()
    assert (res.returncode, res.stdout) == (code, out)
    if not allow:
        assert b"Operation not permitted" in res.stderr  # EPERM
    with pytest.raises(OSError):
        os.fstat(ev.fd)  # answer() closed the event's descriptor


def test_a_directory_mark_guards_its_children_only(group: Fanotify, secret: Path) -> None:
    deeper = secret.parent / "sub" / "deep.bin"
    deeper.parent.mkdir()
    deeper.write_bytes(b"x")
    group.mark(secret.parent, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD)
    op = Opener(secret)
    ev = next_events(group)[0]
    group.answer(ev, False)
    assert op.wait().returncode == 1
    # Directory marks are not recursive: a file one level further down raises no event.
    assert subprocess.run([CAT, str(deeper)], capture_output=True, timeout=10, check=False).returncode == 0
    assert group.read(0.2) == []


def test_an_inode_mark_follows_the_file_through_a_hard_link(group: Fanotify, secret: Path, tmp_path: Path) -> None:
    link = tmp_path / "elsewhere.bin"
    os.link(secret, link)
    group.mark(secret, FAN_OPEN_PERM)
    op = Opener(link)
    ev = next_events(group)[0]
    group.answer(ev, False)
    assert op.wait().returncode == 1


def test_an_answer_is_taken_once(group: Fanotify, secret: Path) -> None:
    group.mark(secret, FAN_OPEN_PERM)
    op = Opener(secret)
    ev = next_events(group)[0]
    group.respond(ev.fd, True)
    with pytest.raises(OSError) as e:
        group.respond(ev.fd, False)  # the kernel knows no pending event for it any more
    assert e.value.errno == errno.ENOENT
    os.close(ev.fd)
    assert op.wait().returncode == 0


@pytest.mark.parametrize("fd", [-1, True, 10**9])
def test_answers_for_no_event_are_refused(group: Fanotify, fd: int) -> None:
    with pytest.raises(OSError) as e:
        group.respond(fd, True)
    assert e.value.errno in (errno.EINVAL, errno.ENOENT, errno.EBADF)


def test_closing_the_group_lets_pending_opens_through(group: Fanotify, secret: Path) -> None:
    """What a dead agent leaves: the kernel allows what nobody will answer (docs: the watchdog)."""
    group.mark(secret, FAN_OPEN_PERM)
    op = Opener(secret)
    ev = next_events(group)[0]
    os.close(ev.fd)
    group.close()
    assert op.wait().returncode == 0
    with pytest.raises(OSError) as e:
        group.respond(3, True)
    assert e.value.errno == errno.EBADF


def test_a_notification_group_reports_without_blocking(secret: Path) -> None:
    with Fanotify(FAN_CLASS_NOTIF) as g:
        g.mark(secret, FAN_OPEN)
        res = subprocess.run([CAT, str(secret)], capture_output=True, timeout=10, check=False)
        assert res.returncode == 0  # nobody had to answer
        ev = next_events(g)[0]
        assert ev.mask & FAN_OPEN and not ev.is_permission
        assert fd_path(ev.fd) == str(secret)
        g.answer(ev, True)  # only closes the descriptor: nothing to answer


def test_reading_the_event_descriptor_raises_no_event(group: Fanotify, secret: Path) -> None:
    group.mark(secret, FAN_OPEN_PERM)
    op = Opener(secret)
    ev = next_events(group)[0]
    assert os.pread(ev.fd, 100, 0) == b"plaintext weights"  # FMODE_NONOTIFY: no event for us to answer
    group.answer(ev, True)
    assert op.wait().returncode == 0
    assert group.read(0.1) == []


@pytest.mark.parametrize(("path", "mask", "code"), [
    ("/no/such/file", FAN_OPEN_PERM, errno.ENOENT),
    ("", FAN_OPEN_PERM, errno.EINVAL),
    ("/etc\0x", FAN_OPEN_PERM, errno.EINVAL),
    ("/etc", 1 << 64, errno.EINVAL),
    ("/etc", -1, errno.EINVAL),
    ("/etc", 0, errno.EINVAL),
    ("/etc", 1 << 50, errno.EINVAL),  # a bit no kernel knows
])
def test_bad_marks_are_refused(group: Fanotify, path: str, mask: int, code: int) -> None:
    with pytest.raises(OSError) as e:
        group.mark(path, mask)
    assert e.value.errno == code


def test_a_notification_group_cannot_take_permission_marks(secret: Path) -> None:
    with Fanotify(FAN_CLASS_NOTIF) as g, pytest.raises(OSError) as e:
        g.mark(secret, FAN_OPEN_PERM)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(("flags", "event_flags"), [(-1, 0), (1 << 30, os.O_RDONLY), (FAN_CLASS_NOTIF, -5)])
def test_bad_group_flags_are_refused(flags: int, event_flags: int) -> None:
    with pytest.raises(OSError) as e:
        Fanotify(flags, event_flags)
    assert e.value.errno == errno.EINVAL


def test_without_cap_sys_admin_there_is_no_permission_group() -> None:
    """What makes the agent fall back to inotify: fanotify_init says EPERM."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop CAP_SYS_ADMIN"
    code = ("import custos.agent.guard.fanotify as f\n"
            "try:\n    f.Fanotify(f.FAN_CLASS_CONTENT)\nexcept OSError as e:\n    print(e.errno)\n")
    res = subprocess.run([setpriv, "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.stdout.strip() == str(errno.EPERM), res.stderr


_META = struct.Struct("=IBBHQii")


def _rec(mask: int = FAN_OPEN_PERM, fd: int = 7, pid: int = 42, vers: int = FANOTIFY_METADATA_VERSION,
         event_len: int = 24, meta_len: int = 24) -> bytes:
    return _META.pack(event_len, vers, 0, meta_len, mask, fd, pid)


@pytest.mark.parametrize(("buf", "events", "problem"), [
    (b"", [], None),
    (_rec(), [FanotifyEvent(FAN_OPEN_PERM, 7, 42)], None),
    (_rec() + _rec(FAN_OPEN, 8, 43), [FanotifyEvent(FAN_OPEN_PERM, 7, 42), FanotifyEvent(FAN_OPEN, 8, 43)], None),
    (_rec(event_len=32) + b"\0" * 8, [FanotifyEvent(FAN_OPEN_PERM, 7, 42)], None),  # info records skipped
    (_rec()[:20], [], "truncated"),
    (_rec() + _rec()[:5], [FanotifyEvent(FAN_OPEN_PERM, 7, 42)], "truncated"),
    (_rec(vers=2), [], "version"),
    (_rec(event_len=16, meta_len=16), [], "lengths"),
    (_rec(event_len=20), [], "lengths"),  # shorter than its header
    (_rec(event_len=4096), [], "lengths"),  # runs past the buffer
    (_rec(event_len=0, meta_len=0), [], "lengths"),  # would loop forever
])
def test_event_parsing_stops_at_anything_malformed(buf: bytes, events: list[FanotifyEvent],
                                                   problem: str | None) -> None:
    got, why = parse_events(buf)
    assert got == events
    assert (why is None) if problem is None else (why is not None and problem in why)
