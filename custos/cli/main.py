"""`custos`: the one entry point. The only module that prints and exits.

Human output by default, `--output json` on every command. Errors are one line
on stderr and a non-zero exit: 2 bad input, 3 not found, 4 permission denied,
5 unavailable, 6 conflict, 7 verification failed, 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import NoReturn

import grpc

from custos.cli.output import EXIT_BY_ERROR, Out
from custos.client.status import error_from_rpc
from custos.errors import CustosError

COMMANDS: dict[str, str] = {
    "demo": "custos.cli.demo",
    "dev": "custos.cli.dev",
    "completion": "custos.cli.completion",
    "model": "custos.cli.models",
    "artifact": "custos.cli.artifacts",
    "push": "custos.cli.transfer", "pull": "custos.cli.transfer",
    "lineage": "custos.cli.lineage", "copies": "custos.cli.lineage",
    "host": "custos.cli.hosts", "hosts": "custos.cli.hosts", "alerts": "custos.cli.hosts",
    "incident": "custos.cli.incidents",
    "run": "custos.cli.run",
    "signer": "custos.cli.signers",
    "order": "custos.cli.orders", "drill": "custos.cli.orders", "drill-register": "custos.cli.drills",
    "audit": "custos.cli.audit",
    "access": "custos.cli.access",
    "canary": "custos.cli.canaries",
    "console": "custos.cli.console",
}
"""Each top-level command -> the module whose ``add_commands(sub, common)`` declares it.
The parser is built for the command that runs only (the whole parser for help and
for an unknown command), so a command loads what it uses and no more."""

PLUGIN_GROUP = "custos.commands"
"""Entry points of the distributions that bring their own commands: the control
plane's (`custos server`) and the agent's (`custos agent ...`). Each is a function
``add_commands(sub, common)``."""

AddCommands = Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]


def _declarers(command: str | None) -> list[AddCommands]:
    """The ``add_commands`` that declare ``command``: its module's, or a plugin's; every one
    when ``command`` is None or unknown (help lists them all; argparse names the choices)."""
    if command in COMMANDS:
        add: AddCommands = importlib.import_module(COMMANDS[command]).add_commands
        return [add]
    plugins = sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name)
    mine = [ep for ep in plugins if ep.name == command]
    if mine:
        return [ep.load() for ep in mine]
    modules = list(dict.fromkeys(COMMANDS.values()))
    return [importlib.import_module(m).add_commands for m in modules] + [ep.load() for ep in plugins]


def resolve(fn: str | Callable[[argparse.Namespace, Out], int]) -> Callable[[argparse.Namespace, Out], int]:
    """A command's handler: a callable, or ``"module:function"`` imported now (plugins name
    their handlers so, so that building the parser never loads a control plane or an agent)."""
    if callable(fn):
        return fn
    module, _, name = fn.partition(":")
    handler: Callable[[argparse.Namespace, Out], int] = getattr(importlib.import_module(module), name)
    return handler


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (its first word picks the command); None: the whole parser."""
    p = argparse.ArgumentParser(prog="custos", description="Model-weight custody and full-shutdown control plane.")
    p.add_argument("--version", action="version", version=version_text(),
                   help="the versions of custos and of the installed control plane and agent")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and output")
    g.add_argument("--output", "-o", choices=["text", "json", "id"], default=os.environ.get("CUSTOS_OUTPUT", "text"),
                   help="text for people, json for programs, id: only the id of the result (env CUSTOS_OUTPUT)")
    g.add_argument("--addr", help="control plane host:port (env CUSTOS_ADDR)")
    g.add_argument("--ca", help="CA certificate (env CUSTOS_CA)")
    g.add_argument("--tls-cert", help="client certificate (env CUSTOS_CERT)")
    g.add_argument("--tls-key", help="client key (env CUSTOS_KEY)")
    g.add_argument("--role", help="pick ROLE.pem/ROLE.key from CUSTOS_CERT_DIR (env CUSTOS_ROLE)")
    g.add_argument("--identity", help="pick NAME.pem/NAME.key from CUSTOS_CERT_DIR: one person's certificate, "
                   "e.g. sec2 in dev (env CUSTOS_IDENTITY; --role wins over the env)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    command = argv[0] if argv else None
    for add in _declarers(command):
        add(sub, common)
    return p


def version_text() -> str:
    """``custos 0.1.0 (controlplane 0.1.0, agent 0.1.0)``: what is installed here."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    parts = [f"{name} {v}" for name, dist in (("controlplane", "custos-controlplane"), ("agent", "custos-agent"))
             if (v := of(dist)) is not None]
    return f"custos {of('custos') or '?'}" + (f" ({', '.join(parts)})" if parts else "")


def _fail(msg: str, code: int) -> NoReturn:
    print(f"custos: error: {msg}", file=sys.stderr)
    sys.exit(code)


GLOBAL_OPTIONS = ("--output", "-o", "--addr", "--ca", "--tls-cert", "--tls-key", "--role", "--identity", "--timeout")
"""The connection and output options (each takes a value); each command declares them."""


def hoist_options(args: list[str]) -> list[str]:
    """``custos --identity sec2 access approve ID`` as ``custos access approve ID --identity sec2``:
    connection options written before the command go after it (before a ``--``, whose
    rest is a workload's command line)."""
    lead: list[str] = []
    i = 0
    while i < len(args) and args[i].split("=", 1)[0] in GLOBAL_OPTIONS:
        lead.append(args[i])
        if "=" not in args[i] and i + 1 < len(args):
            lead.append(args[i + 1])
            i += 1
        i += 1
    if not lead:
        return args
    rest = args[i:]
    cut = rest.index("--") if "--" in rest else len(rest)
    return rest[:cut] + lead + rest[cut:]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args, 1):
        # Names, reasons and paths all travel as UTF-8; bytes without a UTF-8 form (the
        # shell hands them over as lone surrogates) are refused here, once, not deep inside.
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            _fail(f"argument {i} is not valid UTF-8: {arg.encode('utf-8', 'backslashreplace').decode()[:80]}", 2)
    args = hoist_options(args)
    ns = build_parser(args).parse_args(args)
    out = Out(getattr(ns, "output", "text"))
    try:
        try:
            return int(resolve(ns.fn)(ns, out))
        except grpc.RpcError as exc:
            # The library maps its calls' errors itself; this is for a plugin command's own calls.
            raise error_from_rpc(exc, getattr(ns, "addr", None) or os.environ.get("CUSTOS_ADDR", "?")) from None
    except CustosError as exc:
        for cls, rc in EXIT_BY_ERROR:
            if isinstance(exc, cls):
                _fail(str(exc), rc)
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
