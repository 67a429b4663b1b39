"""`custos run`: a workload supervised by the local agent, on a verified pull.

A client of the agent's local socket (:mod:`custos.client.localagent`): the agent
pulls and verifies the artifact, runs the command as the caller, and wipes the
plaintext when it ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from custos.client.localagent import LocalClient
from custos.errors import CustosError, InvalidInput


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("run", parents=[common], help="run CMD on a pulled artifact, supervised by the local agent",
                       usage="custos run --model M [--artifact ID] [--detach] -- CMD [ARG...]")
    r.add_argument("--model", required=True, help="the model whose artifact the workload runs")
    r.add_argument("--artifact", help="artifact id or prefix (default: the model's newest stored artifact)")
    r.add_argument("--detach", action="store_true", help="start and print the workload id and pid; do not wait")
    r.add_argument("--socket", help="the agent's socket (env CUSTOS_AGENT_SOCKET)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    r.set_defaults(fn=cmd_run)


def _exit_status(code: int | None) -> int:
    if code is None:
        return 1
    if code < 0:
        return 128 - code  # killed by signal N: 128 + N, as shells report it
    return code


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_run(ns: argparse.Namespace, out: Any) -> int:
    argv = list(ns.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise InvalidInput("no command: custos run --model M -- CMD [ARG...]")
    path = ns.socket or os.environ.get("CUSTOS_AGENT_SOCKET") or "/run/custos-agent/agent.sock"
    req = {"op": "run", "model": ns.model, "artifact": (ns.artifact or "").lower(), "argv": argv,
           "cwd": os.getcwd(), "env": dict(os.environ), "detach": bool(ns.detach)}
    client = LocalClient(Path(path), timeout=None)
    fds = None if ns.detach else [sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()]
    sys.stdout.flush()
    # SIGINT/SIGTERM end this client; the agent then stops the attached workload.
    old = signal.signal(signal.SIGTERM, _interrupt)
    started: dict[str, Any] = {}
    try:
        for msg in client.request(req, fds=fds, wait=True):
            if msg.get("event") == "started":
                started = msg
                if ns.detach:
                    out.emit({k: v for k, v in msg.items() if k != "event"},
                             f"workload {msg['workload_id']} started (pid {msg['pid']})\n"
                             f"  artifact {msg['artifact_id']}")
                    return 0
            elif msg.get("event") == "exit":
                code = msg.get("exit_code")
                if msg.get("stopped"):
                    print(f"custos: workload {msg.get('workload_id')} stopped: {msg['stopped']}", file=sys.stderr)
                if out.json:
                    out.emit({"workload_id": msg.get("workload_id"), "exit_code": code,
                              "stopped": msg.get("stopped"), "artifact_id": started.get("artifact_id")}, "")
                return _exit_status(code)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    raise CustosError("the agent closed the connection before the workload ended")
