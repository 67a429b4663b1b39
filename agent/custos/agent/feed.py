"""Orders over any path: the signed-order feed, the drop directory and apply-order.

An order is valid by its signatures alone, so the agent takes it from wherever it
comes and hands it to the one order handler the custody stream uses
(custos.agent.orders.VerifyingOrderHandler: the same verifier against the pinned
signer set, the same replay state, the same evidence). A control plane that keeps
renewing leases while dropping every order therefore cannot keep a host from halting:

- **the feed**: every ``[orders] feed_interval`` seconds (10) the agent lists
  ``feed_prefix`` (``orders/feed/``) of the blob store at ``feed_url`` with its own
  read-only credentials (``[blobs]``) and applies every object it has not seen,
  oldest first. Seen objects (key and ETag) are remembered, bounded, so a listing
  does not re-verify the feed; a refused object is logged once and retried only
  every ``REFUSED_RETRY_S`` (a clock that was behind may make it valid);
- **the drop directory** (``[orders] drop_dir``, STATE_DIR/orders-drop, 0700): a
  file placed there (under a name not starting with ``.``, renamed into place) is
  applied within a second and moved to ``done/`` or ``refused/`` with its ack
  beside it (``NAME.ack.json``);
- **`custos agent apply-order FILE`**: the file's descriptor, passed over the local
  socket (custos.agent.localapi), is applied at once and the ack returned.

Objects that are too big, malformed, forged, under-quorum, expired, stale or
replayed change nothing: the handler refuses them. An ack of an order executed here
(not a refusal, not a repeat) goes to the control plane on the stream, now or when
the stream returns (custos.agent.stream holds it, across restarts too); a refusal
stays local, so a forged copy in the feed cannot spoil the evidence of the real order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from custos.agent.stream import OrderHandler
from custos.blobs.base import BlobStore, ObjectInfo
from custos.client.orderfeed import read_object, signed_order_of
from custos.core.orderfile import MAX_ORDER_FILE_BYTES, OrderFile
from custos.core.orders import order_id_of
from custos.errors import BackendUnavailable, CustosError, FailedPrecondition, InvalidInput
from custos.fs.private import private_dir, write_private
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent.feed")

DROP_POLL_S = 1.0  # the drop directory is a local directory listing: cheap
MAX_SEEN = 10_000  # feed objects remembered (the newest, by key); a larger feed is read from its newest end
MAX_PER_POLL = 200  # objects applied per poll; the rest the next time
MAX_DROP_PER_PASS = 100
REFUSED_RETRY_S = 300.0
ACK_SUFFIX = ".ack.json"
_VERIFIED = ("halted", "lifted", "destroyed", "already-executed")


def ack_json(ack: custody_pb2.OrderAck) -> dict[str, Any]:
    """An ack as JSON (what the drop directory and apply-order show)."""
    return MessageToDict(ack, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


@dataclass
class _Seen:
    etag: str
    retry_at: float  # monotonic; inf once applied
    reason: str = ""


class OrderIntake:
    """Feeds orders from the feed, the drop directory and apply-order into ``handler``.

    ``deliver(ack)`` sends an ack of an order executed here to the control plane
    (CustodyStream.deliver_ack). ``open_feed()`` opens the feed's blob store (None: no
    feed); it raises CustosError when it cannot (retried at the next poll).
    """

    def __init__(self, *, handler: OrderHandler, deliver: Callable[[custody_pb2.OrderAck], None],
                 drop_dir: Path, open_feed: Callable[[], BlobStore] | None, feed_prefix: str,
                 feed_interval: float, drop_poll: float = DROP_POLL_S) -> None:
        self.handler = handler
        self.deliver = deliver
        self.drop_dir = drop_dir
        self.open_feed = open_feed
        self.feed_prefix = feed_prefix
        self.feed_interval = feed_interval
        self.drop_poll = drop_poll
        self._seen: dict[str, _Seen] = {}
        self._store: BlobStore | None = None
        self._feed_error = ""
        self._drop_error = ""
        self._stuck: set[str] = set()  # dropped names that could not be filed away: not applied again
        self.polls = 0
        self.applied = {"feed": 0, "drop-dir": 0, "apply-order": 0}
        self.refused = {"feed": 0, "drop-dir": 0, "apply-order": 0}
        self.last_poll_unix_ns = 0

    def status(self) -> dict[str, Any]:
        return {"feed": bool(self.open_feed), "feed_prefix": self.feed_prefix, "feed_interval_s": self.feed_interval,
                "feed_polls": self.polls, "feed_error": self._feed_error or None,
                "last_feed_poll_unix_ns": self.last_poll_unix_ns, "drop_dir": str(self.drop_dir),
                "drop_dir_error": self._drop_error or None, "applied": dict(self.applied),
                "refused": dict(self.refused)}

    # - one order, from any path -

    async def apply(self, data: bytes, *, source: str, name: str) -> custody_pb2.OrderAck:
        """Decode a signed-order file and hand it to the handler; the ack (never raises on bad input)."""
        received = time.time_ns()
        try:
            msg = signed_order_of(OrderFile.decode(data))
        except CustosError as exc:
            return self._refused(source, name, received, "", f"malformed order file: {exc}")
        try:
            ack = await self.handler.handle(msg, received_unix_ns=received)
        except Exception as exc:  # a bug must not take the loop down; the order is not acted on twice
            log.exception("order handler failed", extra={"fields": {"source": source, "name": name}})
            return self._refused(source, name, received, order_id_of(bytes(msg.body)),
                                 f"order handler failed: {type(exc).__name__}")
        if ack.verified and ack.outcome in _VERIFIED:
            self.applied[source] += 1
            if ack.outcome != "already-executed":
                log.warning("order taken off the stream executed", extra={"fields": {
                    "source": source, "name": name, "order_id": ack.order_id, "outcome": ack.outcome}})
                self.deliver(ack)
        else:
            self.refused[source] += 1
        return ack

    def _refused(self, source: str, name: str, received: int, oid: str, reason: str) -> custody_pb2.OrderAck:
        self.refused[source] += 1
        return custody_pb2.OrderAck(order_id=oid, verified=False, outcome="refused", reason=reason[:2000],
                                    received_unix_ns=received, done_unix_ns=time.time_ns())

    async def apply_fd(self, fd: int) -> dict[str, Any]:
        """apply-order: read the order file behind ``fd`` (a regular file, bounded) and apply it.
        The caller keeps and closes ``fd``. Raises InvalidInput (not a file, too big)."""
        data = await asyncio.to_thread(_read_fd, fd)
        ack = await self.apply(data, source="apply-order", name="-")
        if not ack.verified:
            log.error("apply-order refused", extra={"fields": {"order_id": ack.order_id, "reason": ack.reason}})
        return ack_json(ack)

    # - loops -

    async def run(self, stop: asyncio.Event) -> None:
        """The feed poller and the drop-directory loop, until ``stop``."""
        tasks = [asyncio.create_task(self._drop_loop(stop))]
        if self.open_feed is not None:
            tasks.append(asyncio.create_task(self._feed_loop(stop)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()  # the feed's store belongs to whoever opened it (the agent closes its stores)

    async def _feed_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_feed()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("order feed poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.feed_interval)

    async def _drop_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.scan_drop_dir()
            except Exception:  # as above
                log.exception("order drop directory scan failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.drop_poll)

    # - the feed -

    def _feed_trouble(self, error: str) -> None:
        if error != self._feed_error:
            if error:
                log.warning("order feed unreadable", extra={"fields": {"error": error}})
            else:
                log.info("order feed readable again")
        self._feed_error = error

    async def poll_feed(self) -> int:
        """List the feed once and apply what is new; how many objects were applied."""
        assert self.open_feed is not None
        self.polls += 1
        self.last_poll_unix_ns = time.time_ns()
        try:
            if self._store is None:
                self._store = await asyncio.to_thread(self.open_feed)
            listed = await asyncio.to_thread(self._store.list, self.feed_prefix)
        except CustosError as exc:
            self._feed_trouble(str(exc)[:300])
            return 0
        except ImportError:
            self._feed_trouble("an s3:// feed needs the agent's s3 extra (pip install 'custos-agent[s3]')")
            return 0
        self._feed_trouble("")
        if len(listed) > MAX_SEEN:
            log.warning("order feed holds more objects than are remembered: reading its newest end",
                        extra={"fields": {"objects": len(listed), "kept": MAX_SEEN}})
            listed = listed[-MAX_SEEN:]
        keys = {o.key for o in listed}
        for k in [k for k in self._seen if k not in keys]:
            del self._seen[k]  # gone from the feed: forget (bounded by the listing)
        now = time.monotonic()
        todo = [o for o in listed if (s := self._seen.get(o.key)) is None or s.etag != o.etag or s.retry_at <= now]
        done = 0
        for info in todo[:MAX_PER_POLL]:  # oldest first: names sort by the time they were made
            if await self._apply_object(info):
                done += 1
        return done

    async def _apply_object(self, info: ObjectInfo) -> bool:
        assert self._store is not None
        try:
            data = await asyncio.to_thread(read_object, self._store, info)
        except InvalidInput as exc:  # too big or empty: refused without reading it
            data = None
            reason = f"malformed order file: {exc}"
        except CustosError as exc:  # unreadable now (gone, replaced, backend down): try again next poll
            log.info("order feed object unreadable", extra={"fields": {"key": info.key, "error": str(exc)[:200]}})
            return False
        if data is not None:
            ack = await self.apply(data, source="feed", name=info.key)
        else:
            ack = self._refused("feed", info.key, time.time_ns(), "", reason)
        prev = self._seen.get(info.key)
        if ack.verified:
            self._seen[info.key] = _Seen(info.etag, float("inf"))
            return True
        if prev is None or prev.etag != info.etag or prev.reason != ack.reason:
            log.error("order in the feed refused", extra={"fields": {
                "key": info.key, "order_id": ack.order_id, "reason": ack.reason}})
        self._seen[info.key] = _Seen(info.etag, time.monotonic() + REFUSED_RETRY_S, ack.reason)
        return True

    # - the drop directory -

    def _drop_trouble(self, error: str) -> None:
        if error != self._drop_error and error:
            log.error("order drop directory unusable", extra={"fields": {"dir": str(self.drop_dir), "error": error}})
        self._drop_error = error

    async def scan_drop_dir(self) -> int:
        """Apply every file waiting in the drop directory; how many were handled."""
        try:
            for d in (self.drop_dir, self.drop_dir / "done", self.drop_dir / "refused"):
                private_dir(d)
            entries = sorted(e.name for e in os.scandir(self.drop_dir))
        except (OSError, CustosError) as exc:
            self._drop_trouble(str(exc))
            return 0
        self._drop_trouble("")
        self._stuck &= set(entries)
        n = 0
        for name in entries:
            if name.startswith(".") or name in ("done", "refused") or name in self._stuck:
                continue  # being written (temporary name), our own subdirectories, or stuck
            if n >= MAX_DROP_PER_PASS:
                break
            n += 1
            await self._apply_dropped(name)
        return n

    async def _apply_dropped(self, name: str) -> None:
        path = self.drop_dir / name
        try:
            data = await asyncio.to_thread(_read_dropped, path)
        except FileNotFoundError:
            return
        except (OSError, InvalidInput) as exc:
            ack = self._refused("drop-dir", name, time.time_ns(), "", f"malformed order file: {exc}")
        else:
            ack = await self.apply(data, source="drop-dir", name=name)
        where = "done" if ack.verified else "refused"
        if not ack.verified:
            log.error("order in the drop directory refused", extra={"fields": {
                "file": name, "order_id": ack.order_id, "reason": ack.reason}})
        if not await asyncio.to_thread(_file_away, self.drop_dir, name, where, ack) and len(self._stuck) < MAX_SEEN:
            self._stuck.add(name)


def _read_fd(fd: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput("apply-order: not a regular file")
    if st.st_size > MAX_ORDER_FILE_BYTES:
        raise InvalidInput(f"apply-order: larger than {MAX_ORDER_FILE_BYTES} bytes")
    data = os.pread(fd, MAX_ORDER_FILE_BYTES + 1, 0)
    if len(data) > MAX_ORDER_FILE_BYTES:
        raise InvalidInput(f"apply-order: larger than {MAX_ORDER_FILE_BYTES} bytes")
    return data


def _read_dropped(path: Path) -> bytes:
    """A dropped file's bytes: a regular file (a link is not followed), bounded. Raises
    InvalidInput, OSError, FileNotFoundError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if os.path.islink(path):
            raise InvalidInput("a symbolic link, not a file (not followed)") from None
        raise
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _file_away(base: Path, name: str, where: str, ack: custody_pb2.OrderAck) -> bool:
    """Move ``base/name`` into ``base/where/`` with its ack beside it (the ack first: whoever
    waits for it finds the file moved). A taken name gets a suffix. False if it cannot be moved."""
    dest = base / where / name
    k = 1
    while os.path.lexists(dest) or os.path.lexists(str(dest) + ACK_SUFFIX):
        dest = base / where / f"{name}.{k}"
        k += 1
    write_private(str(dest) + ACK_SUFFIX, json.dumps(
        {"ack": ack_json(ack), "file": name, "source": "drop-dir"}, indent=1, sort_keys=True).encode())
    try:
        os.rename(base / name, dest)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # Cannot move it (a mount point, say): leave it where it is, and never apply it again.
        log.error("cannot file a dropped order away", extra={"fields": {"file": name, "error": str(exc)}})
        return False
    return True


def apply_through_drop_dir(drop_dir: Path, data: bytes, *, wait: float, poll: float = 0.1) -> dict[str, Any]:
    """`custos agent apply-order --drop-dir`: write ``data`` into the drop directory under a
    fresh name (atomically: a temporary name first) and wait for the agent's ack.

    Raises FailedPrecondition (no usable drop directory), BackendUnavailable (no ack in time).
    """
    try:
        st = os.lstat(drop_dir)
    except OSError as exc:
        raise FailedPrecondition(f"no drop directory at {drop_dir} ({exc.strerror}): is the agent running "
                                 "with this [orders] drop_dir?") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"{drop_dir} is not a directory")
    name = f"apply-{time.time_ns()}-{os.getpid()}.order"
    write_private(drop_dir / name, data)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for where in ("done", "refused"):
            try:
                rec = json.loads((drop_dir / where / (name + ACK_SUFFIX)).read_bytes())
            except (FileNotFoundError, ValueError):
                continue  # not yet (or being written)
            return dict(rec["ack"])
        time.sleep(poll)
    raise BackendUnavailable(f"no ack for {drop_dir / name} within {wait:.0f} s: is the agent running? "
                             "(the file stays; the agent applies it when it starts)")
