"""`custos drill-register show|declare`: the signed list of what a drill may really halt.

A drill is signed below the halt threshold, so it may stop only models and artifacts a
rotate threshold of executives declared drillable (custos.core.drills). ``declare``
asks the control plane for the next register, prints exactly what will be signed (from
the canonical bytes), signs it with the given keys or attaches offline signatures, and
installs it. ``--export`` writes the bytes for ``ssh-keygen -Y sign -n
custos-drill-register`` instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from custos.cli.common import connect, read_passphrase, read_signature_file
from custos.cli.output import Out
from custos.client import drills
from custos.client.signerkeys import load_private_key
from custos.core.drills import DrillRegister
from custos.core.signers import Signature
from custos.v1 import orders_pb2


def register_json(info: orders_pb2.DrillRegisterInfo) -> dict[str, Any]:
    return {"version": info.version, "signer_set_version": info.signer_set_version, "models": list(info.models),
            "artifacts": list(info.artifacts), "threshold": info.threshold, "signed_by": list(info.signed_by)}


def _text(d: dict[str, Any]) -> str:
    if not d["version"]:
        return "no drill register installed: every drill is refused (custos drill-register declare)"
    return "\n".join([
        f"drill register v{d['version']} (signer set v{d['signer_set_version']}), "
        f"signed by {len(d['signed_by'])}/{d['threshold']}",
        f"  drill models: {', '.join(d['models']) or '-'}",
        f"  drill artifacts: {len(d['artifacts'])}"] + [f"    {a}" for a in d["artifacts"][:50]])


def _describe(register: DrillRegister) -> str:
    return (f"drill register v{register.version} for signer set v{register.signer_set_version}: "
            f"models {', '.join(register.models) or '-'}; {len(register.artifacts)} artifacts")


def cmd_show(ns: argparse.Namespace, out: Out) -> int:
    d = register_json(drills.get_register(connect(ns)))
    out.emit(d, lambda: _text(d))
    return 0


def cmd_declare(ns: argparse.Namespace, out: Out) -> int:
    """Prepare, show, sign and install the next drill register."""
    client = connect(ns)
    register = drills.prepare(client, add=ns.model or [], remove=ns.remove or [])
    # Show what the canonical bytes say, not what the server summarizes.
    print(f"declaring: {_describe(register)}", file=sys.stderr)
    if ns.export:
        Path(ns.export).write_bytes(register.signature_input())
        out.emit({"file": ns.export, "id": register.id},
                 f"wrote the bytes to sign to {ns.export}: ssh-keygen -Y sign -n custos-drill-register")
        return 0
    sigs: list[Signature] = []
    for path in ns.key or []:
        sigs.append(register.sign(load_private_key(path, read_passphrase(ns))))
    for path in ns.sigfile or []:
        sigs += read_signature_file(path)
    d = register_json(drills.install(client, register, sigs))
    out.emit(d, lambda: _text(d))
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    dr = sub.add_parser("drill-register", help="the signed list of what a drill may really halt").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    show = dr.add_parser("show", parents=[common], help="the installed drill register")
    show.set_defaults(fn=cmd_show)
    dec = dr.add_parser("declare", parents=[common],
                        help="sign and install the next register (a rotate threshold of executives)")
    dec.add_argument("--model", action="append", help="a drill model to declare, with its artifacts (repeat)")
    dec.add_argument("--remove", action="append", help="a model to take out of the register (repeat)")
    dec.add_argument("--key", action="append", help="signer key to sign with (repeat for the rotate threshold)")
    dec.add_argument("--sigfile", action="append",
                     help="a signature made offline (ssh-keygen -Y sign -n custos-drill-register) (repeat)")
    dec.add_argument("--export", help="write the bytes to sign here and stop")
    dec.add_argument("--passphrase-file", help="file holding the signer keys' passphrase")
    dec.set_defaults(fn=cmd_declare)
