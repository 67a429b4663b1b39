"""CLI commands of the host agent: `custos agent enroll`, `custos agent run`, `custos run`.

:func:`add_commands` adds them to the `custos` parser (custos/cli/main.py). Each
handler is ``fn(ns, out) -> int`` and raises custos.errors on bad input; the
main module prints the one-line error and picks the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from custos.errors import CustosError, InvalidInput


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add `agent enroll`, `agent run` and `run` to the `custos` sub-command parser."""
    ag = sub.add_parser("agent", help="the host agent daemon").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")

    en = ag.add_parser("enroll", parents=[common], help="enroll this host with a one-time token")
    en.add_argument("--enroll-addr", help="enrollment listener host:port (env CUSTOS_ENROLL_ADDR)")
    en.add_argument("--name", help="this host's name (default: the machine's hostname)")
    en.add_argument("--token", help="one-time token from `custos host add` (env CUSTOS_ENROLL_TOKEN)")
    en.add_argument("--token-file", help="read the token from this file")
    en.add_argument("--state-dir", required=True, help="the agent's state directory (identity is stored here)")
    en.add_argument("--server-name", default="", help="TLS name to verify if it differs from the address")
    en.set_defaults(fn=cmd_agent_enroll)

    run = ag.add_parser("run", parents=[common], help="run the agent daemon (foreground)")
    run.add_argument("--config", help="agent TOML config (deploy/agent.example.toml)")
    run.add_argument("--dev", action="store_true",
                     help="DEVELOPMENT: use DATA_DIR/dev.env, enroll with the dev security-team certificate")
    run.add_argument("--data-dir", help="dev server data dir (with --dev)")
    run.add_argument("--scan", action="append", default=[], help="directory to inventory (with --dev; repeatable)")
    run.add_argument("--name", help="host name (with --dev; default: hostname)")
    run.add_argument("--state-dir", help="state directory (with --dev; default DATA_DIR/agents/NAME)")
    run.add_argument("--socket", help="local socket path (with --dev; default DATA_DIR/agent.sock)")
    run.add_argument("--log-level", help="debug, info, warning, error")
    run.set_defaults(fn=cmd_agent_run)

    r = sub.add_parser("run", parents=[common], help="run CMD on a pulled artifact, supervised by the local agent",
                       usage="custos run --model M [--artifact ID] [--detach] -- CMD [ARG...]")
    r.add_argument("--model", required=True, help="the model whose artifact the workload runs")
    r.add_argument("--artifact", help="artifact id or prefix (default: the model's newest stored artifact)")
    r.add_argument("--detach", action="store_true", help="start and print the workload id and pid; do not wait")
    r.add_argument("--socket", help="the agent's socket (env CUSTOS_AGENT_SOCKET)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    r.set_defaults(fn=cmd_run)


# -- agent enroll ---------------------------------------------------------------------------


def cmd_agent_enroll(ns: argparse.Namespace, out: Any) -> int:
    from custos.agent.config import default_host_name, validate_host_name
    from custos.agent.enroll import enroll

    addr = ns.enroll_addr or os.environ.get("CUSTOS_ENROLL_ADDR")
    ca = ns.ca or os.environ.get("CUSTOS_CA")
    if not addr:
        raise InvalidInput("--enroll-addr (or CUSTOS_ENROLL_ADDR) is required")
    if not ca:
        raise InvalidInput("--ca (or CUSTOS_CA) is required: the CA that verifies the control plane")
    token = ns.token or os.environ.get("CUSTOS_ENROLL_TOKEN", "")
    if ns.token_file:
        try:
            token = Path(ns.token_file).read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read {ns.token_file}: {exc.strerror}") from None
    name = validate_host_name(ns.name) if ns.name else default_host_name()
    ident = asyncio.run(enroll(enroll_addr=addr, ca_file=Path(ca), name=name, token=token,
                               state_dir=Path(ns.state_dir), server_name=ns.server_name))
    out.emit({"host": ident.name, "cert_sha256": ident.fingerprint, "state_dir": str(Path(ns.state_dir)),
              "lease_ttl_seconds": ident.lease_ttl, "signer_set_pinned": bool(ident.signer_set)},
             f"enrolled host {ident.name}\n  certificate sha256 {ident.fingerprint}\n"
             f"  identity in {ident.directory}\n  lease TTL {ident.lease_ttl} s"
             + ("" if ident.signer_set else "\n  no signer set to pin yet (orders cannot be verified)"))
    return 0


# -- agent run ------------------------------------------------------------------------------


def build_config(ns: argparse.Namespace) -> Any:
    """The daemon's config from flags. Raises InvalidInput."""
    from custos.agent.config import dev_config, load_agent_config

    if ns.dev:
        if not ns.data_dir:
            raise InvalidInput("--dev needs --data-dir (the dev server's data dir)")
        base = load_agent_config(Path(ns.config), dev=True) if ns.config else None
        return dev_config(Path(ns.data_dir), scan=ns.scan, name=ns.name, base=base,
                          state_dir=Path(ns.state_dir) if ns.state_dir else None,
                          socket_path=Path(ns.socket) if ns.socket else None)
    if not ns.config:
        raise InvalidInput("--config FILE is required (or --dev --data-dir D --scan DIR for development)")
    for flag in ("data_dir", "name", "state_dir", "socket"):
        if getattr(ns, flag):
            raise InvalidInput(f"--{flag.replace('_', '-')} is for --dev; set it in the config file")
    if ns.scan:
        raise InvalidInput("--scan is for --dev; set scan.roots in the config file")
    return load_agent_config(Path(ns.config))


def cmd_agent_run(ns: argparse.Namespace, out: Any) -> int:
    from custos import logs
    from custos.agent.daemon import Agent

    cfg = build_config(ns)
    try:
        logs.setup(ns.log_level or cfg.log_level, json_format=cfg.log_format == "json")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    from custos.agent.orders import VerifyingOrderHandler

    # Orders are acted on only after this agent's own verification against its pinned signer set.
    return asyncio.run(Agent(cfg, order_handler_factory=VerifyingOrderHandler).run())


# -- run --------------------------------------------------------------------------------------


def _exit_status(code: int | None) -> int:
    if code is None:
        return 1
    if code < 0:
        return 128 - code  # killed by signal N: 128 + N, as shells report it
    return code


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_run(ns: argparse.Namespace, out: Any) -> int:
    from custos.agent.localapi import LocalClient

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
