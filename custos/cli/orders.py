"""`custos order propose|sign|export|sign-file|attach|status|report` and `custos drill`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from custos.cli import signed_reports
from custos.cli.common import (
    connect,
    duration,
    load_signer,
    read_exported,
    read_passphrase,
    read_signature_file,
    write_exported,
)
from custos.cli.output import Out, table, ts
from custos.cli.publish import add_publish_command
from custos.client import orders
from custos.client.session import Client
from custos.client.signerkeys import load_private_key
from custos.core.orders import ORDER_DOMAIN, Order
from custos.core.reports import order_report_html, time_to_halt_png, time_to_halt_svg
from custos.core.signers import encode_signatures
from custos.errors import InvalidInput
from custos.v1 import orders_pb2

NS = 1_000_000_000


def order_json(o: orders_pb2.OrderInfo) -> dict[str, Any]:
    return {"id": o.id, "action": o.action, "models": list(o.models), "artifacts": len(o.artifacts),
            "reason": o.reason, "issued_at": ts(o.issued_at * NS), "not_after": ts(o.not_after * NS),
            "issued_at_unix": o.issued_at, "not_after_unix": o.not_after, "sequence": o.sequence,
            "signer_set_version": o.signer_set_version, "drill": o.drill, "state": o.state,
            "signed_by": list(o.signed_by), "threshold": o.threshold, "missing": o.missing,
            "proposed_by": o.proposed_by, "quorum_at": ts(o.quorum_at_unix_ns),
            "completed_at": ts(o.completed_at_unix_ns), "problems": list(o.problems)}


def _order_text(d: dict[str, Any]) -> str:
    expires = d["not_after"]
    lines = [f"order {d['id']}",
             f"  {d['action']}{' (drill)' if d['drill'] else ''} of {', '.join(d['models'])} "
             f"({d['artifacts']} artifacts incl. derivatives)",
             f"  reason: {d['reason']}",
             f"  state: {d['state']}; {len(d['signed_by'])} of {d['threshold']} signatures"
             + (f" ({d['missing']} more needed)" if d["state"] == "proposed" else ""),
             f"  expires {expires}; sequence {d['sequence']}, signer set v{d['signer_set_version']}"]
    if d["quorum_at"] != "-":
        lines.append(f"  quorum at {d['quorum_at']}; completed at {d['completed_at']}")
    # Waiting for signatures is the normal state of a proposed order, not a problem.
    lines += [f"  problem: {p}" for p in d["problems"]
              if not (d["state"] == "proposed" and p.startswith("threshold_not_met"))]
    return "\n".join(lines)


def cmd_order_propose(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    d = order_json(orders.propose(client, action=ns.action, models=ns.model, reason=ns.reason,
                                  expires_seconds=duration(ns.expires), drill=ns.drill))
    out.emit(d, lambda: _order_text(d))
    return 0


def cmd_order_sign(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    _, order = orders.fetch_order(client, ns.order)
    key = load_signer(ns)
    # Sign what the canonical body says, not what the server summarizes.
    print(f"signing: {order.action}{' (drill)' if order.drill else ''} of {', '.join(order.models)} "
          f"({len(order.artifacts)} artifacts); reason: {order.reason}", file=sys.stderr)
    d = order_json(orders.sign(client, order, key))
    out.emit(d, lambda: _order_text(d))
    return 0


def cmd_order_export(ns: argparse.Namespace, out: Out) -> int:
    _, order = orders.fetch_order(connect(ns), ns.order)
    write_exported(order.signature_input(), ns.file)
    return 0


def cmd_order_sign_file(ns: argparse.Namespace, out: Out) -> int:
    order = Order.decode(read_exported(ns.file, ORDER_DOMAIN, "an exported order (custos order export)"))
    print(f"signing offline: {order.action} of {', '.join(order.models)}; reason: {order.reason}", file=sys.stderr)
    sig = order.sign(load_signer(ns))
    target = Path(ns.out or f"{ns.file}.sig.json")
    target.write_bytes(encode_signatures([sig]))
    out.emit({"order_id": order.id, "key_id": sig.key_id, "signature_file": str(target)},
             f"signature for order {order.id[:16]} written to {target}")
    return 0


def cmd_order_attach(ns: argparse.Namespace, out: Out) -> int:
    d = order_json(orders.attach(connect(ns), ns.order, read_signature_file(ns.sigfile)))
    out.emit(d, lambda: _order_text(d))
    return 0


EXIT_INCOMPLETE = 8
"""`custos order status ID --wait`: the order executed, but copies remain, hosts did not ack, or
it expired unsigned (the verdict of custos.core.reports says which)."""


def cmd_order_status(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    if ns.wait is not None and not ns.order:
        raise InvalidInput("--wait needs an order id")
    if ns.order:
        info = orders.get_order(client, ns.order)
        if ns.wait is None:
            d = order_json(info)
            out.emit(d, lambda: _order_text(d))
            return 0
        from custos.core.reports import verdict

        info = orders.wait(client, info, timeout=ns.wait)
        d = order_json(info)
        v = verdict(json.loads(orders.report(client, info.id, "json").content))
        d["verdict"] = v["text"]
        d["complete"] = v["complete"]
        out.emit(d, lambda: _order_text(d) + f"\n  verdict: {v['text']}")
        return 0 if v["complete"] else EXIT_INCOMPLETE
    rows = [order_json(o) for o in orders.list_orders(client)]
    out.emit(rows, lambda: table(
        [[o["id"][:16], o["action"] + (" (drill)" if o["drill"] else ""), ",".join(o["models"])[:40], o["state"],
          f"{len(o['signed_by'])}/{o['threshold']}", o["proposed_by"]] for o in rows],
        ["ORDER", "ACTION", "MODELS", "STATE", "SIGS", "PROPOSED BY"]))
    return 0


def _print_report(client: Client, order_id: str, fmt: str, png: str | None, svg: str | None = None) -> None:
    """Print the order's report (markdown, json, or html rendered here); write its time-to-halt
    plot to ``png`` / ``svg`` when asked."""
    data: dict[str, Any] | None = None

    def as_data() -> dict[str, Any]:
        nonlocal data
        if data is None:
            data = json.loads(orders.report(client, order_id, "json").content)
        return data

    content = order_report_html(as_data()) if fmt == "html" else orders.report(client, order_id, fmt).content
    try:
        if png:
            Path(png).write_bytes(time_to_halt_png(as_data()))
        if svg:
            Path(svg).write_text(time_to_halt_svg(as_data()), encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write the plot: {exc.strerror}: {exc.filename}") from None
    print(content)


def cmd_order_report(ns: argparse.Namespace, out: Out) -> int:
    if ns.signed:
        return signed_reports.cmd_signed_report(ns, out)
    _print_report(connect(ns), ns.order, "json" if out.json else ns.format, ns.png, ns.svg)
    return 0


def cmd_drill(ns: argparse.Namespace, out: Out) -> int:
    """Propose a drill, sign it with the given keys, wait for completion, print the report."""
    client = connect(ns)
    info = orders.propose(client, action=ns.action, models=ns.model, reason=ns.reason,
                          expires_seconds=duration(ns.expires), drill=ns.action == "drill")
    print(f"proposed {ns.action} order {info.id[:16]} over {', '.join(info.models)}", file=sys.stderr)
    order = Order.decode(info.body)
    for path in ns.key or []:
        info = orders.sign(client, order, load_private_key(path, read_passphrase(ns)))
        print(f"signed with {path}: {len(info.signed_by)}/{info.threshold}", file=sys.stderr)
        if info.state != "proposed":
            break
    info = orders.wait(client, info, timeout=ns.wait)
    if info.state == "proposed":
        d = order_json(info)
        out.emit(d, _order_text(d) + "\nnot yet at quorum: more executives sign with `custos order sign`")
        return 0
    _print_report(client, order.id, "json" if out.json else "markdown", ns.png)
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    od = sub.add_parser("order", help="quorum-signed orders: drill, halt, lift, destroy").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    op = od.add_parser("propose", parents=[common], help="propose an order; prints its id")
    op.add_argument("--action", required=True, choices=["drill", "halt", "lift", "destroy"], help="what the order does")
    op.add_argument("--model", action="append", required=True, help="model (derivatives are included)")
    op.add_argument("--reason", required=True, help="why: every signer and every agent sees it")
    op.add_argument("--expires", default="1h", help="e.g. 30m, 1h, 2d (max 7d)")
    op.add_argument("--drill", action="store_true",
                    help="drill: only what the signed drill register declares really halts; the rest is dry-run")
    op.set_defaults(fn=cmd_order_propose)
    osn = od.add_parser("sign", parents=[common], help="sign an order online with a signer key")
    osn.add_argument("order", help="order id or a unique prefix")
    osn.add_argument("--key", required=True, help="your signer key file")
    osn.add_argument("--passphrase-file", help="a file with the key's passphrase")
    osn.set_defaults(fn=cmd_order_sign)
    oe = od.add_parser("export", parents=[common], help="write the exact bytes to sign (for offline signing)")
    oe.add_argument("order", help="order id or a unique prefix")
    oe.add_argument("--file", help="write here instead of stdout")
    oe.set_defaults(fn=cmd_order_export)
    osf = od.add_parser("sign-file", parents=[common], help="sign an exported order offline")
    osf.add_argument("file", help="the exported order file to sign offline")
    osf.add_argument("--key", required=True, help="your signer key file")
    osf.add_argument("--out", help="signature file (default FILE.sig.json)")
    osf.add_argument("--passphrase-file", help="a file with the key's passphrase")
    osf.set_defaults(fn=cmd_order_sign_file)
    oa = od.add_parser("attach", parents=[common],
                       help="attach a signature file (sign-file output or ssh-keygen -Y sign -n custos-order)")
    oa.add_argument("order", help="order id or a unique prefix")
    oa.add_argument("sigfile", help="the signature file to attach")
    oa.set_defaults(fn=cmd_order_attach)
    ost = od.add_parser("status", parents=[common], help="one order, or all")
    ost.add_argument("order", nargs="?", help="an order id or prefix (default: list every order)")
    ost.add_argument("--wait", type=float, nargs="?", const=60.0, metavar="SECONDS",
                     help=f"wait while the order is proposed or executing (default 60 s), then give its verdict; "
                          f"exit {EXIT_INCOMPLETE} unless it is complete (no residual copy, every host acked)")
    ost.set_defaults(fn=cmd_order_status)
    orp = od.add_parser("report", parents=[common], help="completion report (Markdown, or JSON with -o json)")
    orp.add_argument("order", help="order id or a unique prefix")
    orp.add_argument("--format", choices=["markdown", "json", "html"], default="markdown",
                     help="markdown (default), json, or one self-contained html page with the plot")
    orp.add_argument("--png", help="also write a time-to-halt plot here (PNG)")
    orp.add_argument("--svg", help="also write a time-to-halt plot here (SVG: title, axes, one mark per host)")
    orp.add_argument("--signed", action="store_true",
                     help="the signed report file (check it offline with `custos order verify-report`)")
    orp.add_argument("--out", help="with --signed: write the file here instead of stdout")
    orp.set_defaults(fn=cmd_order_report)
    add_publish_command(od, common)
    signed_reports.add_commands(od, common)
    dr = sub.add_parser("drill", parents=[common], help="propose, sign and follow a shutdown drill (or halt)")
    dr.add_argument("--model", action="append", required=True, help="a model in scope (repeat for more)")
    dr.add_argument("--reason", default="scheduled shutdown drill", help="why: every signer and agent sees it")
    dr.add_argument("--action", default="drill", choices=["drill", "halt"], help="drill (default) or a real halt")
    dr.add_argument("--key", action="append", help="signer key to sign with (repeat for a quorum)")
    dr.add_argument("--expires", default="1h", help="how long the order may wait for signatures (default 1h)")
    dr.add_argument("--wait", type=float, default=60.0, help="seconds to wait for completion")
    dr.add_argument("--png", help="write a time-to-halt plot here")
    dr.add_argument("--passphrase-file", help="a file with the key's passphrase")
    dr.set_defaults(fn=cmd_drill)
