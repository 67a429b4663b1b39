"""The signer set, client side: the current version, and rotating to the next."""

from __future__ import annotations

from collections.abc import Sequence

from custos.client.session import Client
from custos.core.signers import Signature, encode_signatures
from custos.v1 import orders_pb2


def get_signer_set(client: Client) -> orders_pb2.SignerSetInfo:
    """The signer set in force and the chain of rotations to it."""
    return client.call(client.orders.GetSignerSet, orders_pb2.GetSignerSetRequest(), orders_pb2.SignerSetInfo)


def rotate_signer_set(client: Client, signer_set: bytes, signatures: Sequence[Signature]) -> orders_pb2.SignerSetInfo:
    """Install the encoded next version with the signatures of its old and new signers."""
    req = orders_pb2.RotateSignerSetRequest(signer_set=signer_set, signatures=encode_signatures(signatures))
    return client.call(client.orders.RotateSignerSet, req, orders_pb2.SignerSetInfo)
