"""The order feed: at quorum, the signed order is published to the control plane's blob
store, under ``[orders] feed_prefix`` (``orders/feed/``), where agents poll it besides
their stream (custos.agent.feed). A control plane that later stops delivering orders
on the streams — or a stream that is down — no longer keeps an agent from halting.

The object is the signed-order file (custos.core.orderfile) of exactly what goes down
the streams (Fanout.signed_message), named ``{quorum_at_ns:020d}-{order_id}.order``:
the same name on every replica and every retry, so publishing is idempotent.

Publishing never blocks or fails an order: it runs in its own task, after the order is
already executing and pushed to the streams; a failure is logged, counted
(``custos_order_feed_publish_failures_total``, ``custos_order_feed_unpublished``) and
retried with backoff until it succeeds or the control plane stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from custos.blobs.base import BlobStore
from custos.client.orderfeed import FEED_PREFIX, check_feed_prefix, order_file_of, publish
from custos.core.orderfile import OrderFileError
from custos.errors import CustosError
from custos.v1 import custody_pb2

log = logging.getLogger("custos.orders")

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


class OrderFeed:
    """Publishes executing orders to the feed; ``prefix`` "" switches publishing off."""

    def __init__(self, blobs: BlobStore, *, signed_message: Callable[[dict[str, Any]], custody_pb2.ControlMessage],
                 prefix: str = FEED_PREFIX) -> None:
        self.blobs = blobs
        self.signed_message = signed_message
        self.prefix = check_feed_prefix(prefix) if prefix else ""
        self.failures = 0
        self.published = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.keys: dict[str, str] = {}  # order id -> feed key, once published by this replica

    @property
    def pending(self) -> int:
        """Orders whose publication is still being retried here."""
        return sum(1 for t in self._tasks.values() if not t.done())

    def publish(self, record: dict[str, Any]) -> None:
        """Publish an executing order in the background (once per order and replica at a time)."""
        if not self.prefix:
            return
        oid = record["id"]
        if oid in self.keys or (oid in self._tasks and not self._tasks[oid].done()):
            return
        self._tasks[oid] = asyncio.get_running_loop().create_task(self._publish(record))

    async def _publish(self, record: dict[str, Any]) -> None:
        oid = record["id"]
        delay, attempt = RETRY_FIRST_S, 1
        while True:
            try:
                f = order_file_of(self.signed_message(record).order)
                key = await asyncio.to_thread(publish, self.blobs, f, created_ns=int(record["quorum_at_ns"]),
                                              prefix=self.prefix)
            except OrderFileError as exc:
                # Cannot happen for an order that verified; never retried, always loud.
                self.failures += 1
                log.error("order %s: cannot be written as a feed object: %s", oid[:16], exc)
                return
            except CustosError as exc:
                self.failures += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.error("order %s: publishing to the order feed failed (attempt %d), retrying: %s",
                              oid[:16], attempt, exc)
                await asyncio.sleep(delay)
                delay, attempt = min(delay * 2, RETRY_MAX_S), attempt + 1
                continue
            self.keys[oid] = key
            self.published += 1
            log.info("order %s published to the order feed", oid[:16], extra={"fields": {
                "key": key, "attempts": attempt}})
            return

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        for t in self._tasks.values():
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping regardless
                pass


class OrderFeedCollector:
    """Prometheus collector for the feed publisher of this replica."""

    def __init__(self, feed: OrderFeed) -> None:
        self.feed = feed

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = CounterMetricFamily("custos_order_feed_publish_failures",
                                "Failed attempts to publish an executing order to the order feed.")
        c.add_metric([], float(self.feed.failures))
        yield c
        g = GaugeMetricFamily("custos_order_feed_unpublished",
                              "Executing orders this replica is still retrying to publish to the order feed.")
        g.add_metric([], float(self.feed.pending))
        yield g
