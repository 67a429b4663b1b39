"""The control plane's command in the `custos` CLI: `custos server`.

This distribution registers :func:`add_commands` in the ``custos.commands``
entry-point group. It only declares the arguments; ``fn`` names the handler as
``"module:function"`` and the CLI imports it when the command runs, so no other
command loads the control plane.
"""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("server", parents=[common], help="run the control plane")
    s.add_argument("--dev", action="store_true", help="development mode: dev CA, SQLite, local files")
    s.add_argument("--data-dir", help="state directory (dev: CA, certificates, SQLite, dev.env)")
    s.add_argument("--listen", help="address to listen on (default 127.0.0.1:7070; :0 picks a port)")
    s.add_argument("--config", help="TOML config file")
    s.add_argument("--store", help="store URL: sqlite:///PATH, or etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX] "
                   "(every member of the cluster; etcds for TLS)")
    s.add_argument("--log-level", help="debug, info, warning, error")
    s.add_argument("--serve", choices=("all", "keys"), help="all services (default), or the Keys service alone: "
                   "a key-broker replica, its own process, answering unwraps whatever the agents' streams do")
    s.add_argument("--checkpoint-interval", type=float, help="seconds between signed audit checkpoints")
    s.set_defaults(fn="custos.controlplane.commands:cmd_server")

