"""Quorum-signed orders: the signer-set chain, the order book, effects at quorum,
fan-out to agents, acks, completion and reports (see service.py for the whole)."""

from custos.controlplane.orders.book import META
from custos.controlplane.orders.chain import NoSignerSet, bootstrap_dev_signers
from custos.controlplane.orders.service import OrdersService

__all__ = ["META", "NoSignerSet", "OrdersService", "bootstrap_dev_signers"]
