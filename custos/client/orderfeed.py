"""The order feed in an object store, and the signed-order file on the wire.

The feed is a prefix of a blob store (default ``orders/feed/``) holding one object per
signed order (custos.core.orderfile), written by the control plane at quorum and by
executives or the security team with `custos order publish`, and read by agents with
their own read-only credentials. Objects are named so a listing sorts oldest first.

This module converts between the file and ``custody.v1.SignedOrder`` (what the agent's
order handler takes) and reads and writes feed objects. What an object holds is only
ever believed after the agent's own verification.
"""

from __future__ import annotations

from custos.blobs.base import BlobStore, ObjectInfo, validate_prefix
from custos.core.orderfile import MAX_ORDER_FILE_BYTES, OrderFile, OrderFileError, feed_object_name
from custos.core.signers import Signature
from custos.errors import CustosError, InvalidInput
from custos.v1 import custody_pb2

FEED_PREFIX = "orders/feed/"


def check_feed_prefix(prefix: str) -> str:
    """A feed prefix: a valid listing prefix ending in ``/``. Raises InvalidInput."""
    validate_prefix(prefix)
    if not prefix or not prefix.endswith("/"):
        raise InvalidInput(f"feed prefix must be a key prefix ending in '/', got {prefix!r}")
    return prefix


def signed_order_of(f: OrderFile) -> custody_pb2.SignedOrder:
    """The SignedOrder a custody stream would carry for this file."""
    return custody_pb2.SignedOrder(
        body=f.order,
        signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in f.signatures],
        signer_set=f.signer_set, signer_chain=list(f.signer_chain),
        dry_run_models=list(f.dry_run_models), dry_run_artifacts=list(f.dry_run_artifacts),
        drill_register=f.drill_register, drill_register_signatures=f.drill_register_signatures)


def order_file_of(msg: custody_pb2.SignedOrder) -> OrderFile:
    """The file for a SignedOrder. Raises OrderFileError (a field no file can carry)."""
    try:
        sigs = tuple(Signature(key_id=s.key_id, sig=bytes(s.signature).decode("utf-8")) for s in msg.signatures)
    except UnicodeDecodeError:
        raise OrderFileError("order file: a signature is not UTF-8 text") from None
    except CustosError as exc:
        raise OrderFileError(f"order file: {exc}") from None
    return OrderFile(order=bytes(msg.body), signatures=sigs, signer_set=bytes(msg.signer_set),
                     signer_chain=tuple(bytes(e) for e in msg.signer_chain),
                     drill_register=bytes(msg.drill_register),
                     drill_register_signatures=bytes(msg.drill_register_signatures),
                     dry_run_models=tuple(msg.dry_run_models), dry_run_artifacts=tuple(msg.dry_run_artifacts))


def publish(store: BlobStore, f: OrderFile, *, created_ns: int, prefix: str = FEED_PREFIX,
            replace: bool = False) -> str:
    """Write ``f`` to the feed; return its key. An object already under that key is kept
    unless ``replace`` (a publisher that retries, or a second replica, writes the same name).

    Raises OrderFileError, InvalidInput, Unauthorized, BackendUnavailable.
    """
    key = check_feed_prefix(prefix) + feed_object_name(created_ns, f.order_id)
    data = f.encode()
    if not replace and store.head(key) is not None:
        return key
    store.put(key, data)
    return key


def read_object(store: BlobStore, info: ObjectInfo) -> bytes:
    """The bytes of a listed feed object, never more than a file may hold.

    Raises OrderFileError (too big, empty), NotFound, IntegrityError, Unauthorized,
    BackendUnavailable.
    """
    if info.size > MAX_ORDER_FILE_BYTES:
        raise OrderFileError(f"order file: {info.size} bytes, larger than {MAX_ORDER_FILE_BYTES}")
    if info.size <= 0:
        raise OrderFileError("order file: empty")
    return store.read_range(info.key, 0, info.size)
