"""Quorum-signed orders, client side: propose, fetch and verify, sign, attach, status, report, wait.

A signer signs what the canonical order body says, never what the server
summarizes: :func:`fetch_order` refuses a body that does not hash to the
order's id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.client.session import Client
from custos.core.orders import Order
from custos.core.signers import Signature, encode_signatures
from custos.errors import IntegrityError
from custos.v1 import orders_pb2

IN_FLIGHT = ("quorum", "executing")
"""States of an order that has its quorum and is not done yet."""


def propose(client: Client, *, action: str, models: Sequence[str], reason: str, expires_seconds: int,
            drill: bool = False) -> orders_pb2.OrderInfo:
    """Propose an order over ``models`` (their derivatives are included by the server)."""
    req = orders_pb2.ProposeRequest(action=action, models=list(models), reason=reason,
                                    expires_seconds=expires_seconds, drill=drill)
    return client.call(client.orders.Propose, req, orders_pb2.ProposeResponse).order


def get_order(client: Client, ref: str) -> orders_pb2.OrderInfo:
    """One order by id or prefix."""
    return client.call(client.orders.GetOrder, orders_pb2.GetOrderRequest(order_id=ref),
                       orders_pb2.GetOrderResponse).order


def list_orders(client: Client) -> list[orders_pb2.OrderInfo]:
    """Every order the control plane keeps, whatever its state."""
    return list(client.call(client.orders.ListOrders, orders_pb2.ListOrdersRequest(),
                            orders_pb2.ListOrdersResponse).orders)


def fetch_order(client: Client, ref: str) -> tuple[orders_pb2.OrderInfo, Order]:
    """The order and its decoded canonical body. Raises IntegrityError if the body does not
    hash to the id the server gives."""
    info = get_order(client, ref)
    order = Order.decode(info.body)
    if order.id != info.id:
        raise IntegrityError("the order body does not hash to its id: refusing to sign")
    return info, order


def attach(client: Client, order_id: str, signatures: Sequence[Signature]) -> orders_pb2.OrderInfo:
    """Attach signatures (made online, offline or with ssh-keygen) to an order."""
    req = orders_pb2.AttachSignatureRequest(order_id=order_id, signatures=encode_signatures(signatures))
    return client.call(client.orders.AttachSignature, req, orders_pb2.AttachSignatureResponse).order


def sign(client: Client, order: Order, key: Ed25519PrivateKey) -> orders_pb2.OrderInfo:
    """Sign the canonical ``order`` with ``key`` and attach the signature."""
    return attach(client, order.id, [order.sign(key)])


def report(client: Client, order_id: str, fmt: str) -> orders_pb2.GetReportResponse:
    """The order's completion report, ``fmt`` "markdown" or "json"."""
    return client.call(client.orders.GetReport, orders_pb2.GetReportRequest(order_id=order_id, format=fmt),
                       orders_pb2.GetReportResponse)


def signed_report(client: Client, order_id: str) -> bytes:
    """The order's signed report file (custos.core.evidence; check it with ``verify_report``)."""
    return report(client, order_id, "signed").content.encode()


def report_key(client: Client) -> orders_pb2.ReportKeyInfo:
    """The public key (PEM), key id and holder of the key that signs completion reports."""
    return client.call(client.orders.GetReportKey, orders_pb2.GetReportKeyRequest(), orders_pb2.ReportKeyInfo)


def wait(client: Client, info: orders_pb2.OrderInfo, *, timeout: float, poll: float = 0.2) -> orders_pb2.OrderInfo:
    """Follow an order while it executes (at most ``timeout`` seconds); its latest state."""
    deadline = time.monotonic() + timeout
    while info.state in IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(poll)
        info = get_order(client, info.id)
    return info
