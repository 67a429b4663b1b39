"""The agent's local socket, client side, and its protocol.

The agent listens on a Unix stream socket (default /run/custos-agent/agent.sock;
dev: DATA_DIR/agent.sock); :mod:`custos.agent.localapi` serves it.

Protocol: JSON lines (UTF-8, at most 1 MiB each). The client sends one request:

    {"op": "status"}
    {"op": "workloads"}
    {"op": "run", "model": M, "artifact": ID or "", "argv": [...], "cwd": "/abs",
     "env": {...}, "detach": false}
    {"op": "apply-order"}           with one descriptor: a signed-order file (custos.core.orderfile)

An attached run passes the client's stdin, stdout and stderr as SCM_RIGHTS
ancillary data with the request, so the workload writes straight to the
caller's terminal. Replies are one JSON object per line:

    {"event": "status", ...}
    {"event": "started", "workload_id": W, "pid": P, "artifact_id": A, "artifact_dir": D}
    {"event": "exit", "workload_id": W, "exit_code": N or null, "stopped": REASON or null}
    {"event": "ack", "ack": {...}}  the order's ack (outcome "refused" when it was not acted on)
    {"event": "error", "error": "one line", "error_type": "FailedPrecondition"}
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from custos import errors
from custos.errors import BackendUnavailable, CustosError, Unauthorized

MAX_LINE = 1 << 20
MAX_FDS = 3


def error_event(exc: CustosError) -> dict[str, Any]:
    """The reply that carries ``exc``: its message's first line and its class under custos.errors."""
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__module__ == "custos.errors"), "CustosError")
    return {"event": "error", "error": str(exc).splitlines()[0] if str(exc) else kind, "error_type": kind}


def _raise_remote(msg: dict[str, Any]) -> None:
    kind = str(msg.get("error_type", "CustosError"))
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, CustosError)):
        cls = CustosError
    raise cls(str(msg.get("error", "the agent refused the request")))


class LocalClient:
    """Blocking client of the local socket (used by the CLI)."""

    def __init__(self, path: Path, *, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise BackendUnavailable(f"no agent is listening on {self.path}: is `custos agent run` running? "
                                     "(set CUSTOS_AGENT_SOCKET or --socket)") from None
        except PermissionError:
            sock.close()
            raise Unauthorized(f"not allowed to connect to {self.path}") from None
        return sock

    def request(self, payload: dict[str, Any], *, fds: list[int] | None = None,
                wait: bool = False) -> Iterator[dict[str, Any]]:
        """Send one request; yield each reply. ``wait`` lifts the timeout after the first reply
        (an attached run lasts as long as its workload). Raises the CustosError the agent names."""
        sock = self._connect()
        try:
            data = json.dumps(payload).encode() + b"\n"
            if fds:
                socket.send_fds(sock, [data], fds)
            else:
                sock.sendall(data)
            f = sock.makefile("rb")
            first = True
            while True:
                try:
                    line = f.readline(MAX_LINE + 1)
                except TimeoutError:
                    raise BackendUnavailable(f"the agent at {self.path} did not answer in time") from None
                if not line:
                    return
                msg = json.loads(line)
                if msg.get("event") == "error":
                    _raise_remote(msg)
                yield msg
                if first and wait:
                    sock.settimeout(None)
                first = False
        finally:
            sock.close()

    def status(self) -> dict[str, Any]:
        for msg in self.request({"op": "status"}):
            return msg
        raise BackendUnavailable(f"the agent at {self.path} closed the connection")

    def apply_order(self, fd: int) -> dict[str, Any]:
        """Hand the agent the signed-order file open at ``fd``; the ack it made. Raises CustosError."""
        for msg in self.request({"op": "apply-order"}, fds=[fd]):
            if msg.get("event") == "ack" and isinstance(msg.get("ack"), dict):
                return dict(msg["ack"])
        raise BackendUnavailable(f"the agent at {self.path} closed the connection without an ack")
