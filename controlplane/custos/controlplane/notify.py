"""Notifications of incidents, access requests and orders: a log sink and signed webhooks,
from a durable outbox.

An incident change and its notification are written in one Store transaction
(``notify/outbox/{time}-{id}``), so a notification is never lost to a crash
and never sent for a change that did not happen. The dispatcher delivers each
outbox entry to every configured sink and deletes it once all have it.

Webhook: ``POST`` of the JSON body with

    Content-Type: application/json
    X-Custos-Event: one of EVENT_KINDS (incident.opened, access.requested, order.proposed, ...)
    X-Custos-Delivery: <id, the same on every retry>
    X-Custos-Timestamp: <Unix seconds of this attempt>
    X-Custos-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<delivery>." || body)>

A receiver recomputes the signature (``verify_webhook``), rejects timestamps
older than its tolerance (replay) and remembers delivery ids within it
(duplicates: delivery is at least once). 5xx, 408, 429 and connection errors
are retried with exponential backoff; other 4xx are not (the receiver refuses).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
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
from pathlib import Path
from typing import Any, Protocol

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
            secret = p.read_bytes().strip()
        except OSError as exc:
            raise InvalidInput(f"{where}: cannot read secret_file {p}: {exc.strerror}") from None
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


def _signed_input(timestamp: int, delivery: str, body: bytes) -> bytes:
    return f"{timestamp}.{delivery}.".encode() + body


def sign_webhook(secret: bytes, *, timestamp: int, delivery: str, body: bytes) -> str:
    """The ``X-Custos-Signature`` value."""
    return "v1=" + hmac.new(secret, _signed_input(timestamp, delivery, body), hashlib.sha256).hexdigest()


def verify_webhook(secret: bytes, body: bytes, headers: Mapping[str, str], *, now: int | None = None,
                   tolerance_s: int = 300, seen: MutableSet[str] | None = None) -> str:
    """Check a delivery as a receiver should. Returns its delivery id.

    Raises IntegrityError: a missing or bad signature, a timestamp outside the
    tolerance (a replay, or a clock off by too much), or a delivery id already
    in ``seen`` (a replay within the tolerance; the id is added otherwise).
    """
    h = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(h["x-custos-timestamp"])
        delivery = h["x-custos-delivery"]
        sig = h["x-custos-signature"]
    except (KeyError, ValueError):
        raise IntegrityError("webhook: missing or malformed X-Custos-Timestamp/-Delivery/-Signature") from None
    want = sign_webhook(secret, timestamp=ts, delivery=delivery, body=body)
    if not hmac.compare_digest(want, sig):
        raise IntegrityError("webhook: bad signature")
    if abs((int(time.time()) if now is None else now) - ts) > tolerance_s:
        raise IntegrityError(f"webhook: timestamp {ts} outside the {tolerance_s}s tolerance (replayed?)")
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
            "Content-Type": "application/json", "User-Agent": "custos-notify/1",
            "X-Custos-Event": kind, "X-Custos-Delivery": delivery, "X-Custos-Timestamp": str(ts),
            "X-Custos-Signature": sign_webhook(self.cfg.secret, timestamp=ts, delivery=delivery, body=body),
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
        rec = {"attempts": 0, "body": body, "created_ns": now, "delivery": delivery, "kind": kind,
               "next_ns": 0, "pending": sorted(self.sinks)}
        return {f"{OUTBOX_PREFIX}{delivery}": encode_canonical(rec)}

    async def dispatch_once(self) -> int:
        """Deliver what is due. Returns the number of entries finished (delivered or dropped)."""
        done = 0
        now = self.clock()
        for e in await self.store.range(OUTBOX_PREFIX, limit=200):
            rec = dict(decode_canonical(e.value))
            if rec["next_ns"] > now:
                continue
            pending = []
            for name in rec["pending"]:
                sink = self.sinks.get(name)
                if sink is None:
                    continue  # a sink removed from the config since
                try:
                    await asyncio.to_thread(sink.deliver, kind=rec["kind"], delivery=rec["delivery"],
                                            body=rec["body"].encode())
                    self.delivered += 1
                except DeliveryFailed as exc:
                    log.warning("notification %s: %s", rec["delivery"], exc)
                    pending.append(name)
            if not pending:
                await self.store.commit(Txn(checks={e.key: e.mod_revision}, deletes=[e.key]))
                done += 1
            elif now - rec["created_ns"] > self.config.max_age_s * 1_000_000_000:
                log.error("notification %s dropped after %ds undelivered to %s", rec["delivery"],
                          self.config.max_age_s, pending)
                self.failed += 1
                await self.store.commit(Txn(checks={e.key: e.mod_revision}, deletes=[e.key]))
                done += 1
            else:
                rec["pending"] = pending
                rec["attempts"] += 1
                backoff = self.config.retry_after_s * 2 ** min(rec["attempts"] - 1, 10)
                rec["next_ns"] = now + int(min(backoff, 3600) * 1e9)
                await self.store.commit(Txn(checks={e.key: e.mod_revision}, puts={e.key: encode_canonical(rec)}))
        return done

    async def run(self, stop: asyncio.Event, is_leader: Callable[[], bool] = lambda: True) -> None:
        while not stop.is_set():
            await pause(self.config.interval_s, stop)
            if is_leader() and not stop.is_set():
                await safe(self.dispatch_once(), "notification dispatch")
