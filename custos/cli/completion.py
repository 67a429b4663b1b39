"""`custos completion bash|zsh|tcsh`: a shell completion script for every command and option,
generated from the parser itself (shtab, the `completion` extra).

    custos completion bash > ~/.local/share/bash-completion/completions/custos
    custos completion zsh > "${fpath[1]}/_custos"
"""

from __future__ import annotations

import argparse
import sys

from custos.cli.output import Out
from custos.errors import FailedPrecondition


def cmd_completion(ns: argparse.Namespace, out: Out) -> int:
    try:
        import shtab
    except ImportError:
        raise FailedPrecondition("shell completion needs shtab: pip install 'custos[completion]'") from None
    from custos.cli.main import build_parser

    sys.stdout.write(shtab.complete(build_parser(None), shell=ns.shell))
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("completion", help="print a shell completion script (bash, zsh or tcsh)")
    c.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete for")
    c.set_defaults(fn=cmd_completion)
