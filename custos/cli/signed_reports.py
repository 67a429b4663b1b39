"""`custos order report ORDER --signed`, `custos order verify-report FILE`, `custos order report-key`.

verify-report is offline: it reads the file, the CA and the report key and checks them
with custos.core.evidence.verify_report, and nothing else (no control plane).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from custos.cli.common import connect, read_bounded
from custos.cli.output import Out
from custos.client import orders
from custos.core.evidence import ReportVerification, load_report_public_key, verify_report
from custos.errors import InvalidInput

EXIT_REJECTED = 7  # as for every failed verification (IntegrityError)


def cmd_signed_report(ns: argparse.Namespace, out: Out) -> int:
    """Fetch the signed report; write it to ``--out`` (exactly its bytes) or to stdout."""
    data = orders.signed_report(connect(ns), ns.order)
    if ns.out:
        Path(ns.out).write_bytes(data)
        print(f"signed report written to {ns.out}: check it with `custos order verify-report {ns.out} "
              "--ca CA_PEM --report-key REPORT_KEY_PEM`", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
    return 0


def result_json(v: ReportVerification) -> dict[str, Any]:
    return {"valid": bool(v), "problems": v.problems, "order_id": v.order_id, "action": v.action,
            "models": list(v.models), "state": v.state, "verdict": v.verdict, "counts": v.counts,
            "hosts": v.statuses, "residual": v.residual, "signer_set_id": v.signer_set_id,
            "signer_set_version": v.signer_set_version, "signed_by": list(v.signed_by),
            "report_key_id": v.report_key_id, "report_signer": v.signer}


def _summary(v: ReportVerification) -> str:
    c = v.counts
    lines = [f"report of order {v.order_id}: VALID",
             f"  {v.action} of {', '.join(v.models)}; quorum of {len(v.signed_by)} keys of signer set "
             f"v{v.signer_set_version} (chain from version 1 id {v.signer_set_id[:16]})",
             f"  verdict: {v.verdict} — {c.get('halted', 0)} of {c.get('hosts', 0)} hosts with verified evidence "
             f"of {'the lift' if v.action == 'lift' else 'the halt'}; control plane state: {v.state}",
             f"  report key {v.report_key_id[:16]} ({v.signer})"]
    lines += [f"  host {h}: {s}" for h, s in sorted(v.statuses.items())]
    lines += [f"  residual: {r}" for r in v.residual]
    return "\n".join(lines)


def cmd_verify_report(ns: argparse.Namespace, out: Out) -> int:
    """Exit 0 with a summary when the report verifies; 7 with every reason otherwise."""
    ca_path = ns.ca or os.environ.get("CUSTOS_CA")
    if not ca_path:
        raise InvalidInput("--ca CA_PEM is required: the CA that issues agent certificates")
    data = read_bounded(ns.file, "report", 64 << 20)
    if data.endswith(b"\n"):
        data = data[:-1]  # as `custos order report --signed` prints it to a terminal
    key = load_report_public_key(read_bounded(ns.report_key, "report key", 1 << 16))
    pinned = read_bounded(ns.signer_set, "signer set", 1 << 20) if ns.signer_set else None
    v = verify_report(data, read_bounded(ca_path, "CA", 1 << 20), key, pinned_signer_set=pinned)
    if out.json:
        out.emit(result_json(v), "")
    elif v:
        print(_summary(v))
    else:
        for problem in v.problems:
            print(f"custos: report rejected: {problem}", file=sys.stderr)
    return 0 if v else EXIT_REJECTED


def cmd_report_key(ns: argparse.Namespace, out: Out) -> int:
    info = orders.report_key(connect(ns))
    pem = info.public_key_pem.decode()
    out.emit({"public_key_pem": pem, "key_id": info.key_id, "signer": info.signer}, pem.rstrip("\n"))
    if not out.json:
        print(f"key id {info.key_id} ({info.signer})", file=sys.stderr)
    return 0


def add_commands(od: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """verify-report and report-key under `custos order` (report --signed is an option of report)."""
    vr = od.add_parser("verify-report", parents=[common],
                       help="check a signed report offline against the CA and the report key")
    vr.add_argument("file", help="the signed report file (custos order report --signed --out FILE)")
    vr.add_argument("--report-key", required=True, help="the control plane's report key (PEM; `order report-key`)")
    vr.add_argument("--signer-set", help="also require the report's signer set version 1 to be this file's bytes")
    vr.set_defaults(fn=cmd_verify_report)
    rk = od.add_parser("report-key", parents=[common], help="print the public key that signs reports (PEM)")
    rk.set_defaults(fn=cmd_report_key)
