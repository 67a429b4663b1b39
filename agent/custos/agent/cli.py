"""The agent's commands in the `custos` CLI: `custos agent enroll`, `run` and `apply-order`.

This distribution registers :func:`add_commands` in the ``custos.commands``
entry-point group; the CLI calls it to build its parser. It only declares the
arguments: each command's ``fn`` names its handler in :mod:`custos.agent.commands`
as ``"module:function"``, which the CLI imports when that command runs, so that
``custos --help`` and every other command never load the agent.
"""

from __future__ import annotations

import argparse

HANDLERS = "custos.agent.commands"


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `agent enroll` and `agent run` to the `custos` sub-command parser."""
    ag = sub.add_parser("agent", help="the host agent daemon").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")

    en = ag.add_parser("enroll", parents=[common], help="enroll this host with a one-time token")
    en.add_argument("--enroll-addr", help="enrollment listener host:port (env CUSTOS_ENROLL_ADDR)")
    en.add_argument("--name", help="this host's name (default: the machine's hostname)")
    en.add_argument("--token", help="one-time token from `custos host add` (env CUSTOS_ENROLL_TOKEN)")
    en.add_argument("--token-file", help="read the token from this file")
    en.add_argument("--state-dir", required=True, help="the agent's state directory (identity is stored here)")
    en.add_argument("--server-name", default="", help="TLS name to verify if it differs from the address")
    en.set_defaults(fn=f"{HANDLERS}:cmd_agent_enroll")

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
    run.set_defaults(fn=f"{HANDLERS}:cmd_agent_run")

    ap = ag.add_parser("apply-order", parents=[common],
                       help="apply a signed-order file on this host (air-gapped hosts; exit 7 if refused)")
    ap.add_argument("file", help="a signed-order file (custos order publish --out, or an object of the feed)")
    ap.add_argument("--socket", help="the agent's socket (env CUSTOS_AGENT_SOCKET)")
    ap.add_argument("--drop-dir", help="write the file into this drop directory and wait for its ack instead")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the ack (with --drop-dir)")
    ap.set_defaults(fn=f"{HANDLERS}:cmd_agent_apply_order")
