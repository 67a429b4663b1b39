"""Notifications of incidents, access requests and orders: a log sink and signed webhooks,
from a durable outbox, with one delivery queue per sink.

An incident change and its notification are written in one Store transaction
(``notify/outbox/{time}-{id}``), so a notification is never lost to a crash
and never sent for a change that did not happen. Each sink has its own
delivery loop over the outbox: it delivers, in order, the entries still pending
for it and takes itself off each one; an entry is deleted once no sink is
pending. A dead or slow sink backs off on its own and never delays another.

Webhooks follow Standard Webhooks (https://www.standardwebhooks.com, the
``standardwebhooks`` package signs and verifies): a ``POST`` of the JSON body with

    Content-Type: application/json
    webhook-id: <the delivery id, the same on every retry>
    webhook-timestamp: <Unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>." || body)>
    X-Custos-Event: one of EVENT_KINDS (also the body's "type", which is signed)

The secret file holds a ``whsec_<base64>`` secret (or, as before, raw bytes of
at least 16). A receiver verifies with ``standardwebhooks.Webhook(secret).verify``
(``verify_webhook`` here), which rejects timestamps more than five minutes off
(replay), and remembers delivery ids within that window (duplicates: delivery
is at least once). 5xx, 408, 429 and connection errors are retried with
exponential backoff; other 4xx are not (the receiver refuses).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, MutableSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from custos.controlplane.periodic import pause, safe
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.rules import SEVERITIES
from custos.errors import BackendUnavailable, IntegrityError, InvalidInput

log = logging.getLogger("custos.notify")

OUTBOX_PREFIX = "notify/outbox/"
EVENT_KINDS = (
    "incident.opened", "incident.alert", "incident.updated", "incident.deadline",
    # custos.controlplane.access queues these in the change's own transaction:
    "access.requested", "access.granted", "access.revoked", "access.break-glass",
    # custos.controlplane.reminders sends these, once each:
    "order.proposed", "order.reminder", "access.reminder",
)


class DeliveryFailed(BackendUnavailable):
    """A sink could not take a notification (after its retries)."""


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str
    secret: bytes = field(repr=False)
    timeout_s: float = 5.0
    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0


@dataclass(frozen=True)
class NotifyConfig:
    log: bool = True
    webhooks: tuple[WebhookConfig, ...] = ()
    min_severity: str = "low"
    interval_s: float = 1.0
    retry_after_s: float = 30.0
    max_age_s: int = 3 * 86400
    remind_before_s: int = 3600  # reminders this long before an order or access request expires

    @property
    def sink_names(self) -> list[str]:
        return (["log"] if self.log else []) + [w.name for w in self.webhooks]


_TOP = frozenset({"log", "webhook", "min_severity", "interval_s", "retry_after_s", "max_age_s", "remind_before"})
_HOOK = frozenset({"name", "url", "secret_file", "timeout_s", "max_attempts", "backoff_s", "max_backoff_s"})


def _number(where: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo < v <= hi:
        raise InvalidInput(f"{where} must be a number above {lo} and at most {hi}, got {v!r}")
    return float(v)


def _seconds(where: str, v: Any, lo: int, hi: int) -> int:
    """An integer of seconds, or a duration such as "90s", "30m", "1h", "2d"."""
    n: int | None = None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and (m := re.fullmatch(r"(\d+)([smhd]?)", v.strip())):
        n = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if n is None or not lo <= n <= hi:
        raise InvalidInput(f"{where} must be seconds or a duration like \"30m\", \"1h\" from {lo}s to {hi}s, "
                           f"got {v!r}")
    return n


def parse_notify_config(raw: Mapping[str, Any] | None, *, base_dir: Path | None = None) -> NotifyConfig:
    """Parse ``[notify]`` (``log = true``, ``[[notify.webhook]]`` tables). Reads each webhook's
    secret file. Raises InvalidInput naming the offending key."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise InvalidInput(f"[notify] unknown key(s) {unknown}: want {sorted(_TOP)}")
    use_log = raw.get("log", True)
    if not isinstance(use_log, bool):
        raise InvalidInput("[notify] log must be true or false")
    min_sev = raw.get("min_severity", "low")
    if min_sev not in SEVERITIES:
        raise InvalidInput(f"[notify] min_severity must be one of {', '.join(SEVERITIES)}, got {min_sev!r}")
    hooks_raw = raw.get("webhook", [])
    if isinstance(hooks_raw, dict):
        hooks_raw = [hooks_raw]
    if not isinstance(hooks_raw, list):
        raise InvalidInput("[notify] webhook must be a table or an array of tables ([[notify.webhook]])")
    hooks: list[WebhookConfig] = []
    for i, h in enumerate(hooks_raw):
        where = f"[[notify.webhook]] #{i + 1}"
        if not isinstance(h, dict):
            raise InvalidInput(f"{where} must be a table")
        extra = sorted(set(h) - _HOOK)
        if extra:
            raise InvalidInput(f"{where}: unknown key(s) {extra}: want {sorted(_HOOK)}")
        url = h.get("url")
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidInput(f"{where}: url must be an http:// or https:// address, got {url!r}")
        name = h.get("name", f"webhook-{i + 1}")
        if not isinstance(name, str) or not name or name == "log" or any(w.name == name for w in hooks):
            raise InvalidInput(f"{where}: name must be unique, non-empty and not \"log\"")
        sf = h.get("secret_file")
        if not isinstance(sf, str) or not sf:
            # Unsigned webhooks would let anyone forge an incident notification.
            raise InvalidInput(f"{where}: secret_file is required (the HMAC key that signs every delivery)")
        p = Path(sf) if Path(sf).is_absolute() else (base_dir or Path.cwd()) / sf
        try:
            secret = webhook_secret(p.read_bytes())
        except OSError as exc:
            raise InvalidInput(f"{where}: cannot read secret_file {p}: {exc.strerror}") from None
        except ValueError:
            raise InvalidInput(f"{where}: the whsec_ secret in {p} is not base64") from None
        if len(secret) < 16:
            raise InvalidInput(f"{where}: the secret in {p} is too short (at least 16 bytes)")
        attempts = h.get("max_attempts", 5)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
            raise InvalidInput(f"{where}: max_attempts must be an integer from 1 to 20")
        if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "::1", "localhost"):
            log.warning("webhook %s is plain http: deliveries are signed but readable on the way", name)
        hooks.append(WebhookConfig(
            name=name, url=str(url), secret=secret, max_attempts=attempts,
            timeout_s=_number(f"{where}: timeout_s", h.get("timeout_s", 5.0), 0, 120),
            backoff_s=_number(f"{where}: backoff_s", h.get("backoff_s", 0.5), 0, 600),
            max_backoff_s=_number(f"{where}: max_backoff_s", h.get("max_backoff_s", 30.0), 0, 3600)))
    max_age = raw.get("max_age_s", 3 * 86400)
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 60 <= max_age <= 30 * 86400:
        raise InvalidInput("[notify] max_age_s must be an integer from 60 to 2592000")
    return NotifyConfig(log=use_log, webhooks=tuple(hooks), min_severity=min_sev,
                        interval_s=_number("[notify] interval_s", raw.get("interval_s", 1.0), 0, 3600),
                        retry_after_s=_number("[notify] retry_after_s", raw.get("retry_after_s", 30.0), 0, 86400),
                        max_age_s=max_age,
                        remind_before_s=_seconds("[notify] remind_before", raw.get("remind_before", 3600), 0,
                                                 30 * 86400))


# -- signatures ------------------------------------------------------------------------


def webhook_secret(raw: bytes) -> bytes:
    """The HMAC key in a secret file: ``whsec_<base64>`` (Standard Webhooks) decoded, or the raw
    bytes. Raises ValueError (not base64)."""
    raw = raw.strip()
    if raw.startswith(b"whsec_"):
        return base64.b64decode(raw[len(b"whsec_"):] + b"==", validate=False)
    return raw


def sign_webhook(secret: bytes, *, timestamp: int, delivery: str, body: bytes) -> str:
    """The ``webhook-signature`` value (Standard Webhooks ``v1,<base64>``)."""
    return Webhook(secret).sign(delivery, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())


def verify_webhook(secret: bytes, body: bytes, headers: Mapping[str, str], *,
                   seen: MutableSet[str] | None = None) -> str:
    """Check a delivery as a receiver should, with the Standard Webhooks verifier. Returns its
    delivery id (``webhook-id``).

    Raises IntegrityError: missing headers, a bad signature, a timestamp more than five
    minutes off (a replay, or a clock off by too much), or a delivery id already in
    ``seen`` (a replay within the window; the id is added otherwise).
    """
    try:
        Webhook(secret).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise IntegrityError(f"webhook: {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError("webhook: malformed webhook-signature or body") from None
    delivery = {k.lower(): v for k, v in headers.items()}["webhook-id"]
    if seen is not None:
        if delivery in seen:
            raise IntegrityError(f"webhook: delivery {delivery} already received (replayed)")
        seen.add(delivery)
    return delivery


# -- sinks ----------------------------------------------------------------------------------


class Sink(Protocol):
    name: str

    def deliver(self, *, kind: str, delivery: str, body: bytes) -> None:
        """Raises DeliveryFailed."""


class LogSink:
    """One structured log line per notification (logger ``custos.notify``)."""

    name = "log"

    def deliver(self, *, kind: str, delivery: str, body: bytes) -> None:
        payload = json.loads(body)
        log.warning("%s: %s", kind, payload.get("summary", ""),
                    extra={"fields": {"notification": kind, "delivery": delivery, "payload": payload}})


class WebhookSink:
    def __init__(self, cfg: WebhookConfig, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.sleep = sleep
        self.clock = clock

    def _post(self, *, kind: str, delivery: str, body: bytes) -> int:
        ts = int(self.clock())
        req = urllib.request.Request(self.cfg.url, data=body, method="POST", headers={  # noqa: S310 - http(s) only, checked at parse
            "Content-Type": "application/json", "User-Agent": "custos-notify/2", "X-Custos-Event": kind,
            "webhook-id": delivery, "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(self.cfg.secret, timestamp=ts, delivery=delivery, body=body),
        })
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:  # noqa: S310 - as above
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def deliver(self, *, kind: str, delivery: str, body: bytes) -> None:
        """POST with retries: exponential backoff on 5xx, 408, 429 and connection errors."""
        last = ""
        for attempt in range(self.cfg.max_attempts):
            if attempt:
                self.sleep(min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** (attempt - 1)))
            try:
                status = self._post(kind=kind, delivery=delivery, body=body)
            except (OSError, urllib.error.URLError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                continue
            if 200 <= status < 300:
                return
            last = f"HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                break  # the receiver refuses this one: retrying will not help
        raise DeliveryFailed(f"webhook {self.name}: {last} after {attempt + 1} attempt(s)")


# -- the outbox --------------------------------------------------------------------------


class Notifier:
    """Queues notifications in the Store with the change they describe; delivers them."""

    def __init__(self, store: Store, config: NotifyConfig, *, clock: Callable[[], int] = time.time_ns,
                 sinks: list[Sink] | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.sinks: dict[str, Sink] = {s.name: s for s in (sinks if sinks is not None else self._sinks())}
        self.failed = 0
        self.delivered = 0

    def _sinks(self) -> list[Sink]:
        out: list[Sink] = [LogSink()] if self.config.log else []
        out += [WebhookSink(w) for w in self.config.webhooks]
        return out

    def outbox_puts(self, kind: str, payload: Mapping[str, Any], *, severity: str = "low") -> dict[str, bytes]:
        """Store writes that queue a notification; add them to the change's transaction."""
        if not self.sinks or SEVERITIES.index(severity) < SEVERITIES.index(self.config.min_severity):
            return {}
        now = self.clock()
        delivery = f"{now:020d}-{secrets.token_hex(6)}"
        body = json.dumps({"type": kind, "delivery": delivery, **payload}, sort_keys=True, separators=(",", ":"))
        rec = {"attempts": {}, "body": body, "created_ns": now, "delivery": delivery, "kind": kind,
               "next": {}, "pending": sorted(self.sinks)}
        return {f"{OUTBOX_PREFIX}{delivery}": encode_canonical(rec)}

    async def dispatch_once(self) -> int:
        """One round of every sink's queue, the sinks side by side. Returns the number of
        entries finished (delivered to every sink, or dropped)."""
        done = await asyncio.gather(*(self.sink_round(name) for name in sorted(self.sinks)))
        return sum(done)

    async def sink_round(self, name: str) -> int:
        """Deliver, in order, what is due for sink ``name``; stop at its first failure (it backs
        off; later entries wait for it, and no other sink waits). Returns the entries this
        round finished (no sink pending any more, or dropped past ``max_age_s``)."""
        sink = self.sinks[name]
        done = 0
        for e in await self.store.range(OUTBOX_PREFIX, limit=200):
            rec = _record(e.value)
            for gone in [n for n in rec["pending"] if n not in self.sinks]:
                done += await self._settle(e.key, gone, delivered=True)  # a sink removed from the config since
            if name not in rec["pending"]:
                continue
            now = self.clock()
            if rec["next"].get(name, 0) > now:
                break  # this sink is backing off
            try:
                await asyncio.to_thread(sink.deliver, kind=rec["kind"], delivery=rec["delivery"],
                                        body=rec["body"].encode())
                self.delivered += 1
                failed = False
            except DeliveryFailed as exc:
                log.warning("notification %s: %s", rec["delivery"], exc)
                failed = True
            if not failed or now - rec["created_ns"] > self.config.max_age_s * 1_000_000_000:
                if failed:
                    log.error("notification %s dropped for %s after %ds undelivered", rec["delivery"], name,
                              self.config.max_age_s)
                    self.failed += 1
                done += await self._settle(e.key, name, delivered=True)
                continue
            attempts = rec["attempts"].get(name, 0) + 1
            backoff = self.config.retry_after_s * 2 ** min(attempts - 1, 10)
            await self._settle(e.key, name, delivered=False, attempts=attempts,
                               next_ns=now + int(min(backoff, 3600) * 1e9))
            break
        return done

    async def _settle(self, key: str, name: str, *, delivered: bool, attempts: int = 0, next_ns: int = 0) -> int:
        """Take ``name`` off the entry (or record its backoff), under a compare-and-set: another
        sink's loop may be settling the same entry. Returns 1 if the entry is now finished."""
        for _ in range(20):
            e = await self.store.get(key)
            if e is None:
                return 0
            rec = _record(e.value)
            if delivered:
                rec["pending"] = [n for n in rec["pending"] if n != name]
                rec["next"].pop(name, None)
                rec["attempts"].pop(name, None)
            else:
                rec["attempts"][name] = attempts
                rec["next"][name] = next_ns
            if delivered and not rec["pending"]:
                txn = Txn(checks={key: e.mod_revision}, deletes=[key])
            else:
                txn = Txn(checks={key: e.mod_revision}, puts={key: encode_canonical(rec)})
            if await self.store.commit(txn):
                return 1 if delivered and not rec["pending"] else 0
        raise BackendUnavailable(f"notification {key}: too much contention settling it")

    async def run(self, stop: asyncio.Event, is_leader: Callable[[], bool] = lambda: True) -> None:
        """One delivery loop per sink until ``stop``."""

        async def loop(name: str) -> None:
            while not stop.is_set():
                await pause(self.config.interval_s, stop)
                if is_leader() and not stop.is_set():
                    await safe(self.sink_round(name), f"notification delivery to {name}")

        await asyncio.gather(*(loop(name) for name in sorted(self.sinks)))


def _record(value: bytes) -> dict[str, Any]:
    """An outbox entry, with per-sink ``attempts`` and ``next`` (entries queued before per-sink
    queues carry one ``attempts`` count and one ``next_ns`` for every sink)."""
    rec = dict(decode_canonical(value))
    if not isinstance(rec.get("attempts"), dict):
        n, at = int(rec.pop("attempts", 0) or 0), int(rec.pop("next_ns", 0) or 0)
        rec["attempts"] = {name: n for name in rec["pending"]} if n else {}
        rec["next"] = {name: at for name in rec["pending"]} if at else {}
    rec["attempts"] = dict(rec["attempts"])
    rec["next"] = dict(rec.get("next", {}))
    return rec
