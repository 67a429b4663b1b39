"""The control plane publishes orders at quorum to the order feed (controlplane/orders/feed.py).

A real Store (SQLite), the real order book and effects, and a real local blob store
behind a fault switch (its writes fail while it is "down"): an order that reaches
quorum while the feed cannot be written still executes at once and runs all its
effects; publishing is retried until it succeeds, counted in the metrics, and writes
exactly the SignedOrder the streams carry, under the same name on every retry and
every replica (one object, never two).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from custos.blobs.base import ObjectInfo
from custos.blobs.local import LocalBlobStore
from custos.client.orderfeed import FEED_PREFIX, signed_order_of
from custos.controlplane.orders import feed as feed_module
from custos.controlplane.orders.feed import OrderFeed, OrderFeedCollector
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.orderfile import OrderFile, feed_object_name
from custos.core.signers import encode_signatures
from custos.errors import BackendUnavailable
from tests.controlplane.test_orders import EXEC, VALID, plant


class SwitchableStore(LocalBlobStore):
    """A real local blob store whose writes fail while ``down`` (an S3 outage, as the publisher sees it)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = True
        self.puts = 0

    def _put(self, key: str, data: memoryview, md5_b64: str) -> ObjectInfo:
        if self.down:
            raise BackendUnavailable("object store unreachable (fault switch)")
        self.puts += 1
        return super()._put(key, data, md5_b64)


async def _until(pred: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_publishing_never_holds_an_order_up_and_is_retried_until_it_lands(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(feed_module, "RETRY_MAX_S", 0.2)
    case = next(c for c in VALID if c.name.startswith("exact-threshold/ed25519/halt"))
    inputs = case.build()

    async def run() -> None:
        store = SQLiteStore(tmp_path / "custos.db")
        blobs = SwitchableStore(tmp_path / "feed")
        try:
            orders, oid = await plant(store, tmp_path, inputs)
            feed = orders.enable_feed(blobs)
            started = time.monotonic()
            d = await orders.attach(EXEC, order_id=oid, signatures=encode_signatures(inputs.signatures))
            assert d["state"] == "executing" and time.monotonic() - started < 5
            # The feed is down: the order's effects still run to the end.
            await _until(lambda: feed.failures >= 2, 10, "publishing retries")

            async def effects_done() -> bool:
                rec = await orders.get(oid)
                return bool(rec.get("effects_done_ns"))

            deadline = time.monotonic() + 10
            while not await effects_done():
                assert time.monotonic() < deadline, "the effects waited for the feed"
                await asyncio.sleep(0.05)
            assert feed.pending == 1 and blobs.puts == 0
            metrics = {m.name: m.samples[0].value for m in OrderFeedCollector(feed).collect()}
            assert metrics["custos_order_feed_publish_failures"] >= 2 and metrics["custos_order_feed_unpublished"] == 1

            blobs.down = False
            await _until(lambda: feed.published == 1, 30, "the order to be published")
            record = await orders.get(oid)
            key = FEED_PREFIX + feed_object_name(record["quorum_at_ns"], oid)
            assert feed.keys[oid] == key and [o.key for o in blobs.list(FEED_PREFIX)] == [key]
            info = blobs.head(key)
            assert info is not None
            got = signed_order_of(OrderFile.decode(blobs.read_range(key, 0, info.size)))
            assert got == orders.fanout.signed_message(record).order  # what the streams carry
            # Again on this replica, and on another one resuming the effects: still one object, one write.
            feed.publish(record)
            other = OrderFeed(blobs, signed_message=orders.fanout.signed_message)
            other.publish(record)
            await _until(lambda: other.published == 1, 10, "the second replica's publish")
            assert blobs.puts == 1 and len(blobs.list(FEED_PREFIX)) == 1
            assert OrderFeedCollector(feed).feed.pending == 0
            for t in list(orders.effects.tasks.values()):
                t.cancel()
            await feed.close()
        finally:
            blobs.close()
            await store.close()

    asyncio.run(run())


def test_an_empty_prefix_switches_publishing_off(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "b")
    try:
        feed = OrderFeed(blobs, signed_message=lambda r: None, prefix="")  # type: ignore[arg-type,return-value]
        feed.publish({"id": "x"})
        assert feed.pending == 0 and blobs.list("") == []
    finally:
        blobs.close()
