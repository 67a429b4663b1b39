"""`custos order publish`, client side: build a signed-order file, check it, write it to a feed.

An executive or the security team publishes an order with their own object-store
credentials, so a control plane that drops orders cannot keep it from the agents.
The file comes from a file (``custos order publish FILE``: an object of a feed, or
one written with ``--out``) or is assembled from the control plane's order body,
signer-set chain and drill register plus signatures the publisher holds (``--sig``:
`custos order sign-file` output or ``ssh-keygen -Y sign -n custos-order`` files).
Signatures are never taken on the control plane's word: the file is checked, before
anything is written, against a signer set the publisher trusts (a pinned file, or the
control plane's current set), as an agent with no replay history would check it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from custos.blobs.url import open_blob_store
from custos.client.drills import get_register
from custos.client.orderfeed import FEED_PREFIX, publish
from custos.client.orders import fetch_order
from custos.client.session import Client
from custos.client.signersets import get_signer_set
from custos.core.canonical import encode_canonical
from custos.core.orderfile import OrderFile, check_order_file
from custos.core.orders import OrderVerification
from custos.core.signers import Signature, TrustedSignerSets
from custos.errors import CustosError, IntegrityError


def order_file_from_control_plane(client: Client, ref: str, signatures: Sequence[Signature]) -> OrderFile:
    """The order ``ref`` as the control plane holds it (body checked against its id), its
    signer-set chain and drill register, with ``signatures``. Raises CustosError."""
    _, order = fetch_order(client, ref)
    sets = get_signer_set(client)
    register = get_register(client)
    chain = tuple(encode_canonical({"set": bytes(r.signer_set).decode(), "signatures": bytes(r.signatures).decode()})
                  for r in sets.chain)
    return OrderFile(order=order.encode(), signatures=tuple(signatures), signer_set=bytes(sets.signer_set),
                     signer_chain=chain, drill_register=bytes(register.body),
                     drill_register_signatures=bytes(register.signatures) if register.body else b"")


def with_signatures(f: OrderFile, signatures: Sequence[Signature]) -> OrderFile:
    """``f`` with ``signatures`` added (an exact duplicate is kept once)."""
    have = {(s.key_id, s.sig) for s in f.signatures}
    return replace(f, signatures=f.signatures + tuple(s for s in signatures if (s.key_id, s.sig) not in have))


def check(f: OrderFile, trusted_set: bytes, *, now: int | None = None) -> OrderVerification:
    """``f`` checked against the trusted set (see custos.core.orderfile.check_order_file).
    Raises InvalidInput, IntegrityError (a rotation chain that does not verify)."""
    trusted = TrustedSignerSets.from_pinned_bytes(trusted_set)
    try:
        return check_order_file(f, trusted, now=int(time.time()) if now is None else now)
    except IntegrityError:
        raise
    except CustosError as exc:
        raise IntegrityError(f"the order's signer-set chain does not verify: {exc}") from None


def publish_to(url: str, f: OrderFile, *, prefix: str = FEED_PREFIX, access_key: str | None = None,
               secret_key: str | None = None) -> str:
    """Write ``f`` to the feed at ``url`` (a blob store URL); its key. The object is named by
    the time of publishing. Raises CustosError."""
    store = open_blob_store(url, access_key=access_key, secret_key=secret_key)
    try:
        return publish(store, f, created_ns=time.time_ns(), prefix=prefix)
    finally:
        store.close()
