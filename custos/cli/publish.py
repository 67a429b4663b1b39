"""`custos order publish ORDER_ID|FILE --to URL [--out FILE]`: write a signed order to an order feed.

The logic is in :mod:`custos.client.publish`; this module parses, prints and picks the exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from custos.cli.common import connect, read_bounded, read_signature_file
from custos.cli.output import Out
from custos.client.orderfeed import FEED_PREFIX, check_feed_prefix
from custos.client.publish import check, order_file_from_control_plane, publish_to, with_signatures
from custos.client.signersets import get_signer_set
from custos.core.orderfile import MAX_ORDER_FILE_BYTES, OrderFile
from custos.core.orders import Order
from custos.errors import IntegrityError, InvalidInput
from custos.fs.private import write_private


def cmd_order_publish(ns: argparse.Namespace, out: Out) -> int:
    if not ns.to and not ns.out:
        raise InvalidInput("say where to: --to URL (a feed) and/or --out FILE (for the drop directory or apply-order)")
    prefix = check_feed_prefix(ns.prefix)
    sigs = [s for path in ns.sig or [] for s in read_signature_file(path)]
    client = None
    source = Path(ns.order)
    if source.is_file():
        f = with_signatures(OrderFile.decode(read_bounded(source, "an order file", MAX_ORDER_FILE_BYTES)), sigs)
    else:
        if not sigs and not ns.force:
            raise InvalidInput("the control plane does not hand out an order's signatures: give them with --sig "
                               "FILE (custos order sign-file output, or ssh-keygen -Y sign -n custos-order)")
        client = connect(ns)
        f = order_file_from_control_plane(client, ns.order, sigs)
    if ns.signer_set:
        trusted = read_bounded(Path(ns.signer_set), "a signer set", MAX_ORDER_FILE_BYTES)
        against = str(ns.signer_set)
    else:
        trusted = bytes(get_signer_set(client or connect(ns)).signer_set)
        against = "the control plane's current signer set"
    v = check(f, trusted)
    order = v.order or Order.decode(f.order)
    problems = "; ".join(f"{x.code}: {x.detail}" for x in v.failures)
    if not v:
        if not ns.force:
            raise IntegrityError(f"order {f.order_id[:16]} does not verify against {against} ({problems}): "
                                 "not published (agents would refuse it; --force publishes it anyway)")
        print(f"WARNING: publishing order {f.order_id[:16]} although it does not verify against {against} "
              f"({problems}); every agent verifies it itself and refuses it if it is invalid", file=sys.stderr)
    data = f.encode()
    written = str(ns.out) if ns.out else ""
    if ns.out:
        write_private(Path(ns.out), data, mode=0o644)  # signed, public: no secret in it
    key = publish_to(ns.to, f, prefix=prefix) if ns.to else ""
    d = {"order_id": f.order_id, "action": order.action, "verified": bool(v), "signatures": len(f.signatures),
         "valid_signatures": len(v.valid), "threshold": v.threshold, "problems": [problems] if problems else [],
         "feed": ns.to or "", "key": key, "file": written}
    text = [f"order {f.order_id} ({order.action}): "
            + (f"verified, {len(v.valid)}/{v.threshold} signatures" if v else "NOT verified")]
    if key:
        text.append(f"  published to {ns.to} as {key}")
    if written:
        text.append(f"  written to {written}")
    out.emit(d, "\n".join(text))
    return 0


def add_publish_command(od: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`order publish` under the `order` sub-command parser."""
    pb = od.add_parser("publish", parents=[common],
                       help="write a signed order to an order feed (agents poll it besides their stream)")
    pb.add_argument("order", help="order id (or prefix) at the control plane, or a signed-order file")
    pb.add_argument("--to", help="the feed's blob store: s3://BUCKET[/PREFIX]?endpoint=URL or file:///DIR "
                                 "(credentials: CUSTOS_S3_ACCESS_KEY / CUSTOS_S3_SECRET_KEY or boto3's chain)")
    pb.add_argument("--prefix", default=FEED_PREFIX, help=f"the feed's prefix in that store (default {FEED_PREFIX})")
    pb.add_argument("--out", help="also write the signed-order file here (for a drop directory or apply-order)")
    pb.add_argument("--sig", action="append", help="a signature file to add (sign-file output or ssh-keygen -Y "
                                                   "sign -n custos-order); repeatable")
    pb.add_argument("--signer-set", help="verify against this signer set (canonical bytes) instead of the control "
                                         "plane's current one")
    pb.add_argument("--force", action="store_true",
                    help="publish even if the order does not verify here (agents still verify it themselves)")
    pb.set_defaults(fn=cmd_order_publish)
