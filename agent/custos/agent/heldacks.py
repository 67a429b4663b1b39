"""Order acks waiting for a custody stream, kept on disk so they survive a restart.

An ack made while no stream is up — an order taken from the feed, the drop directory
or `custos agent apply-order` on a host cut off from the control plane, or a stream
order whose connection broke — is held until the next connection writes it. The
stream keeps them in memory; this keeps the same list in ``STATE_DIR/held-acks.json``
(one private file, replaced atomically), so an agent restarted before it could
reconnect still delivers its evidence. Bounded: the newest ``MAX_HELD`` acks, each at
most ``MAX_ACK_BYTES`` serialized. The file holds acks only: order ids, outcomes,
pids and paths — no keys, no weights.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path

from google.protobuf.message import DecodeError

from custos.fs.private import write_private
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent.stream")

MAX_HELD = 1000
MAX_ACK_BYTES = 8 << 20
MAX_FILE_BYTES = 64 << 20
_VERSION = 1


class HeldAcks:
    """The acks held for the next connection, mirrored to ``path`` (None: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._msgs: list[custody_pb2.AgentMessage] = []

    def __len__(self) -> int:
        return len(self._msgs)

    def load(self) -> list[custody_pb2.AgentMessage]:
        """The acks a previous run left, oldest first (an unreadable file is logged and set aside)."""
        if self.path is None:
            return []
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            raw = json.loads(self.path.read_bytes())
            if not isinstance(raw, dict) or raw.get("version") != _VERSION or not isinstance(raw.get("acks"), list):
                raise ValueError("not a held-acks file of this version")
            msgs = []
            for item in raw["acks"][-MAX_HELD:]:
                ack = custody_pb2.OrderAck()
                ack.ParseFromString(base64.b64decode(str(item), validate=True))
                msgs.append(custody_pb2.AgentMessage(ack=ack))
        except FileNotFoundError:
            return []
        except (OSError, ValueError, binascii.Error, DecodeError) as exc:
            # Evidence only: the control plane re-sends the executed orders it has no ack for.
            log.warning("held acks unreadable; set aside", extra={"fields": {"path": str(self.path),
                                                                              "error": str(exc)[:200]}})
            return []
        self._msgs = msgs
        if msgs:
            log.info("acks held from before the restart", extra={"fields": {"count": len(msgs)}})
        return list(msgs)

    def add(self, msg: custody_pb2.AgentMessage) -> None:
        """Hold ``msg`` (an ack) until :meth:`written`."""
        if msg.WhichOneof("msg") != "ack" or any(m is msg for m in self._msgs):
            return
        if msg.ByteSize() > MAX_ACK_BYTES:
            log.warning("ack too large to keep across a restart", extra={"fields": {"order_id": msg.ack.order_id}})
            return
        self._msgs.append(msg)
        if len(self._msgs) > MAX_HELD:
            dropped = self._msgs[: len(self._msgs) - MAX_HELD]
            self._msgs = self._msgs[-MAX_HELD:]
            log.warning("too many held acks: the oldest are no longer kept across a restart",
                        extra={"fields": {"dropped": [m.ack.order_id[:16] for m in dropped][:20]}})
        self._save()

    def written(self, msg: custody_pb2.AgentMessage) -> None:
        """``msg`` was written to a stream: no longer held."""
        kept = [m for m in self._msgs if m is not msg]
        if len(kept) != len(self._msgs):
            self._msgs = kept
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"acks": [base64.b64encode(m.ack.SerializeToString()).decode() for m in self._msgs],
                "version": _VERSION}
        try:
            write_private(self.path, json.dumps(data).encode())
        except OSError as exc:
            log.warning("cannot keep held acks on disk", extra={"fields": {"error": str(exc)}})
