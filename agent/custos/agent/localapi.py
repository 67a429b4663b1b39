"""The agent's local socket, server side: how `custos run` reaches the agent.

A Unix stream socket (default /run/custos-agent/agent.sock; dev: DATA_DIR/agent.sock),
created 0600 in a directory this agent owns, so only the agent's own user can
connect — unless ``workloads.allowed_uids`` / ``allowed_gids`` are configured,
in which case the socket is 0666 and the peer's credentials (SO_PEERCRED: uid,
gid and supplementary groups of the connecting process, from the kernel) decide.
Root and the agent's own user are always allowed.

The protocol (JSON lines, descriptors passed with SCM_RIGHTS) and its client are
in :mod:`custos.client.localagent`. The workload runs as the connecting user
(uid/gid from SO_PEERCRED). An attached run whose client disconnects is stopped.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from custos.agent.workloads.request import RunRequest
from custos.agent.workloads.supervisor import Supervisor
from custos.client.localagent import MAX_FDS, MAX_LINE, error_event
from custos.errors import CustosError, FailedPrecondition, InvalidInput, Unauthorized

log = logging.getLogger("custos.agent.localapi")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


class LocalApi:
    """Serves the local socket on the running event loop."""

    def __init__(self, path: Path, *, status: Callable[[], dict[str, Any]], supervisor: Supervisor,
                 allowed_uids: tuple[int, ...] = (), allowed_gids: tuple[int, ...] = (),
                 apply_order: Callable[[int], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.path = path
        self.apply_order = apply_order  # `custos agent apply-order`: fd of a signed-order file -> the ack
        self.status = status
        self.supervisor = supervisor
        self.allowed_uids = set(allowed_uids)
        self.allowed_gids = set(allowed_gids)
        self._sock: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def shared(self) -> bool:
        return bool(self.allowed_uids or self.allowed_gids)

    async def start(self) -> None:
        """Bind the socket. Raises FailedPrecondition (another agent listening, unsafe directory)."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True, mode=0o755 if self.shared else 0o700)
        st = os.stat(parent)
        if st.st_uid not in (os.geteuid(), 0) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise FailedPrecondition(f"socket directory {parent} is writable by others: refusing to listen there")
        if os.path.lexists(self.path):  # noqa: ASYNC240 - start-up only
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FailedPrecondition(f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(str(self.path))
            except OSError:
                os.unlink(self.path)  # stale: its agent is gone
            else:
                raise FailedPrecondition(f"another agent is listening on {self.path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o666 if self.shared else 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._accept = asyncio.create_task(self._accept_loop())
        log.info("local socket listening", extra={"fields": {"socket": str(self.path), "shared": self.shared}})

    async def close(self) -> None:
        if self._accept is not None:
            self._accept.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                log.warning("local socket accept failed", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            t = asyncio.create_task(self._serve(conn))
            self._conns.add(t)
            t.add_done_callback(self._conns.discard)

    def _allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid in (0, os.geteuid()) or uid in self.allowed_uids or gid in self.allowed_gids:
            return True
        return bool(self.allowed_gids & _supplementary_groups(pid))

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        fds: list[int] = []
        try:
            pid, uid, gid = peer_credentials(conn)
            if not self._allowed(pid, uid, gid):
                log.warning("local socket: peer refused", extra={"fields": {"uid": uid, "pid": pid}})
                await _send(loop, conn, error_event(Unauthorized(f"uid {uid} may not use this agent")))
                return
            line, fds = await _read_request(loop, conn)
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError
            except ValueError:
                await _send(loop, conn, error_event(InvalidInput("request is not a JSON object")))
                return
            op = req.get("op")
            if op == "status":
                await _send(loop, conn, {"event": "status", **self.status()})
            elif op == "workloads":
                await _send(loop, conn, {"event": "workloads", "workloads": self.supervisor.list_workloads()})
            elif op == "run":
                await self._run(loop, conn, req, fds, uid, gid)
                fds = []
            elif op == "apply-order" and self.apply_order is not None:
                if len(fds) != 1:
                    raise InvalidInput("apply-order passes exactly one descriptor: the order file's")
                log.warning("apply-order from the local socket", extra={"fields": {"uid": uid, "pid": pid}})
                await _send(loop, conn, {"event": "ack", "ack": await self.apply_order(fds[0])})
            else:
                await _send(loop, conn, error_event(InvalidInput(f"unknown op {op!r}")))
        except (ConnectionError, BrokenPipeError):
            pass
        except CustosError as exc:
            with contextlib.suppress(OSError):
                await _send(loop, conn, error_event(exc))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    async def _run(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, data: dict[str, Any],
                   fds: list[int], uid: int, gid: int) -> None:
        try:
            try:
                req = RunRequest.parse(data, uid=uid, gid=gid)
                if not req.detach and len(fds) != 3:
                    raise InvalidInput("an attached run must pass stdin, stdout and stderr")
                wl = await self.supervisor.start(req, fds if not req.detach else [])
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)  # the workload holds its own copies now
        except CustosError as exc:
            await _send(loop, conn, error_event(exc))
            return
        await _send(loop, conn, {"event": "started", "workload_id": wl.id, "pid": wl.pid,
                                 "artifact_id": wl.artifact_id, "artifact_dir": str(wl.artifact_dir)})
        if req.detach:
            return
        done = asyncio.create_task(wl.done.wait())
        gone = asyncio.create_task(_wait_closed(loop, conn))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not done.done():
            log.info("client of an attached run went away: stopping it", extra={"fields": {"workload_id": wl.id}})
            await self.supervisor.stop(wl, "the `custos run` client went away")
            return
        with contextlib.suppress(OSError):
            await _send(loop, conn, {"event": "exit", "workload_id": wl.id, "exit_code": wl.exit_code,
                                     "stopped": wl.stop_reason})


async def _send(loop: asyncio.AbstractEventLoop, conn: socket.socket, msg: dict[str, Any]) -> None:
    await loop.sock_sendall(conn, json.dumps(msg, default=str).encode() + b"\n")


async def _wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


async def _read_request(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[bytes, list[int]]:
    """One request line and the descriptors sent with it. Raises InvalidInput."""
    buf = bytearray()
    fds: list[int] = []
    anc = socket.CMSG_SPACE(MAX_FDS * struct.calcsize("i"))
    try:
        while b"\n" not in buf:
            try:
                data, ancdata, flags, _ = conn.recvmsg(65536, anc)
            except BlockingIOError:
                await _wait_readable(loop, conn)
                continue
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
            if flags & socket.MSG_CTRUNC or len(fds) > MAX_FDS:
                raise InvalidInput(f"at most {MAX_FDS} descriptors may be passed")
            if not data:
                raise ConnectionError("client closed before sending a request")
            buf += data
            if len(buf) > MAX_LINE:
                raise InvalidInput("request too long")
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return bytes(buf.split(b"\n", 1)[0]), fds


async def _wait_closed(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    while True:
        try:
            data = await loop.sock_recv(conn, 4096)
        except OSError:
            return
        if not data:
            return
