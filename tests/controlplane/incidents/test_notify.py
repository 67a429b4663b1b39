"""Notification sinks against local HTTP receivers: Standard Webhooks signatures checked by
the standardwebhooks verifier, retries with backoff after 5xx, no retry on a refusal,
replay protection, the durable outbox, and one delivery queue per sink (a dead sink
never delays another)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from custos.controlplane.notify import (
    DeliveryFailed,
    LogSink,
    WebhookConfig,
    WebhookSink,
    parse_notify_config,
    sign_webhook,
    verify_webhook,
)
from custos.errors import IntegrityError
from tests.controlplane.incidents.conftest import Plane

SECRET = b"0123456789abcdef-webhook-secret"


class Receiver:
    """An HTTP server in a thread that answers with the next scripted status (then 200)."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def sink(url: str, sleeps: list[float], attempts: int = 5) -> WebhookSink:
    return WebhookSink(WebhookConfig(name="hook", url=url, secret=SECRET, max_attempts=attempts, backoff_s=0.5,
                                     max_backoff_s=1.5), sleep=sleeps.append)


def test_webhook_retries_after_5xx_with_backoff_and_signs_every_attempt(receiver: Receiver) -> None:
    receiver.script = [500, 503, 502, 200]
    sleeps: list[float] = []
    body = b'{"type":"incident.opened","x":1}'
    sink(receiver.url, sleeps).deliver(kind="incident.opened", delivery="d-1", body=body)
    assert len(receiver.requests) == 4
    assert sleeps == [0.5, 1.0, 1.5], "exponential, capped"
    seen: set[str] = set()
    for headers, got in receiver.requests:
        assert got == body and headers["content-type"] == "application/json"
        assert headers["x-custos-event"] == "incident.opened" and headers["webhook-id"] == "d-1"
        Webhook(SECRET).verify(got, headers)  # the reference verifier, as a receiver runs it
        assert verify_webhook(SECRET, got, headers) == "d-1"
    headers, got = receiver.requests[-1]
    assert verify_webhook(SECRET, got, headers, seen=seen) == "d-1"
    with pytest.raises(IntegrityError, match="already received"):
        verify_webhook(SECRET, got, headers, seen=seen)


def test_webhook_gives_up_after_max_attempts_and_never_retries_a_refusal(receiver: Receiver) -> None:
    receiver.script = [500, 500, 500]
    with pytest.raises(DeliveryFailed, match="HTTP 500 after 3 attempt"):
        sink(receiver.url, [], attempts=3).deliver(kind="incident.alert", delivery="d-2", body=b"{}")
    assert len(receiver.requests) == 3
    receiver.requests.clear()
    receiver.script = [401]
    with pytest.raises(DeliveryFailed, match="HTTP 401 after 1 attempt"):
        sink(receiver.url, []).deliver(kind="incident.alert", delivery="d-3", body=b"{}")
    assert len(receiver.requests) == 1
    receiver.requests.clear()
    receiver.script = [429, 200]
    sink(receiver.url, []).deliver(kind="incident.alert", delivery="d-4", body=b"{}")
    assert len(receiver.requests) == 2


def test_webhook_to_nowhere_fails_cleanly() -> None:
    from tests.servers.ports import free_port

    with pytest.raises(DeliveryFailed, match="after 2 attempt"):
        sink(f"http://127.0.0.1:{free_port()}/", [], attempts=2).deliver(kind="k", delivery="d", body=b"{}")


@pytest.mark.parametrize(("change", "why"), [
    ({"body": b'{"type":"incident.opened","x":2}'}, "No matching signature"),
    ({"webhook-timestamp": "+1"}, "No matching signature"),  # the timestamp is signed
    ({"webhook-id": "d-other"}, "No matching signature"),  # so is the delivery id
    ({"webhook-signature": None}, "Missing required headers"),
    ({"webhook-signature": "v1=" + "00" * 32}, "malformed"),  # the old home-made format
    ({"webhook-signature": "v1,!!!"}, "No matching signature"),
    ({"webhook-timestamp": "soon"}, "Invalid Signature Headers"),
    ({"sign_at": -600}, "too old"),  # an old, validly signed delivery: a replay
    ({"sign_at": 600}, "too new"),
    ({"secret": b"another-secret-of-enough-length"}, "No matching signature"),
])
def test_signature_check_rejects(change: dict[str, Any], why: str) -> None:
    body = b'{"type":"incident.opened","x":1}'
    ts = int(time.time()) + change.get("sign_at", 0)
    headers: dict[str, Any] = {"webhook-timestamp": str(ts), "webhook-id": "d-1",
                               "webhook-signature": sign_webhook(SECRET, timestamp=ts, delivery="d-1", body=body)}
    for k in ("webhook-timestamp", "webhook-id", "webhook-signature"):
        if k in change:
            if change[k] is None:
                del headers[k]
            elif change[k] == "+1":
                headers[k] = str(ts + 1)
            else:
                headers[k] = change[k]
    with pytest.raises(IntegrityError, match=why):
        verify_webhook(change.get("secret", SECRET), change.get("body", body), headers)


def test_whsec_secret_files_are_decoded(tmp_path: Path) -> None:
    import base64

    key = b"\x01" * 24
    (tmp_path / "s").write_text("whsec_" + base64.b64encode(key).decode() + "\n")
    cfg = parse_notify_config({"webhook": [{"url": "https://a/", "secret_file": "s"}]}, base_dir=tmp_path)
    assert cfg.webhooks[0].secret == key
    body = b'{"type":"k"}'
    headers = {"webhook-id": "d", "webhook-timestamp": str(int(time.time()))}
    headers["webhook-signature"] = sign_webhook(key, timestamp=int(headers["webhook-timestamp"]), delivery="d",
                                                body=body)
    Webhook("whsec_" + base64.b64encode(key).decode()).verify(body, headers)  # what a receiver configures


def test_incident_notifications_go_out_through_the_outbox(plane_factory: Any, tmp_path: Path, receiver: Receiver,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "hook-secret").write_bytes(SECRET + b"\n")
    plane: Plane = plane_factory(notify={"log": True, "webhook": [
        {"name": "soc", "url": receiver.url, "secret_file": str(tmp_path / "hook-secret"), "backoff_s": 0.01}]})
    plane.enroll("gpu-9")
    plane.report("gpu-9", {"/scratch/x.safetensors": b"\x02" * 3000})
    receiver.script = [500]  # the first attempt fails: retried within the delivery
    plane.round()
    [queued] = plane.run(plane.store.range("notify/outbox/"))
    with caplog.at_level(logging.WARNING, logger="custos.notify"):
        assert plane.run(plane.rt.notifier.dispatch_once()) == 1
    assert plane.run(plane.store.range("notify/outbox/")) == [], "delivered to every sink: removed"
    assert len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    verify_webhook(SECRET, body, headers)
    msg = json.loads(body)
    [inc] = plane.incidents()
    assert msg["type"] == "incident.opened" and msg["incident"]["id"] == inc["id"]
    assert msg["incident"]["report_deadline"] and msg["alert"]["rule"] == "unregistered-weights"
    assert msg["delivery"] == headers["webhook-id"] == queued.key.rsplit("/", 1)[1]
    assert any(r.message.startswith("incident.opened: incident") for r in caplog.records), "the log sink"


def test_undeliverable_notification_stays_queued_then_expires(plane_factory: Any, tmp_path: Path,
                                                             receiver: Receiver) -> None:
    (tmp_path / "s").write_bytes(SECRET)
    plane: Plane = plane_factory(notify={"log": False, "retry_after_s": 60, "max_age_s": 3600, "webhook": [
        {"url": receiver.url, "secret_file": str(tmp_path / "s"), "max_attempts": 1}]})
    plane.enroll("gpu-9")
    plane.report("gpu-9", {"/scratch/x.safetensors": b"\x03" * 3000})
    receiver.script = [500, 500]
    plane.round()
    assert plane.run(plane.rt.notifier.dispatch_once()) == 0
    [entry] = plane.run(plane.store.range("notify/outbox/"))
    from custos.core.canonical import decode_canonical

    rec = decode_canonical(entry.value)
    assert rec["pending"] == ["webhook-1"] and rec["attempts"] == {"webhook-1": 1}
    assert plane.run(plane.rt.notifier.dispatch_once()) == 0 and len(receiver.requests) == 1, "not due yet"
    plane.advance(2)  # past the retry time and max_age_s
    assert plane.run(plane.rt.notifier.dispatch_once()) == 1
    assert len(receiver.requests) == 2 and plane.run(plane.store.range("notify/outbox/")) == []
    assert plane.rt.notifier.failed == 1


def test_log_sink_writes_one_structured_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="custos.notify"):
        LogSink().deliver(kind="incident.updated", delivery="d", body=b'{"summary": "incident x open -> triaged"}')
    [rec] = caplog.records
    assert rec.getMessage() == "incident.updated: incident x open -> triaged"
    assert rec.fields["delivery"] == "d"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("raw", "why"), [
    ({"webhook": [{"url": "ftp://x"}]}, "http:// or https://"),
    ({"webhook": [{"url": "https://soc.example/hook"}]}, "secret_file is required"),
    ({"webhook": [{"url": "https://soc.example/hook", "secret_file": "/nonexistent/s"}]}, "cannot read"),
    ({"webhook": [{"url": "https://soc.example/hook", "secret_file": "short"}]}, "too short"),
    ({"webhook": [{"url": "https://a/", "secret_file": "s", "retries": 3}]}, "unknown key"),
    ({"webhook": [{"url": "https://a/", "secret_file": "s", "max_attempts": 0}]}, "max_attempts"),
    ({"webhook": [{"url": "https://a/", "secret_file": "s", "name": "log"}]}, "name must be unique"),
    ({"min_severity": "urgent"}, "min_severity"),
    ({"loggg": True}, "unknown key"),
    ({"interval_s": 0}, "interval_s"),
])
def test_bad_notify_config(tmp_path: Path, raw: dict[str, Any], why: str) -> None:
    (tmp_path / "short").write_bytes(b"abc")
    (tmp_path / "s").write_bytes(SECRET)
    from custos.errors import InvalidInput

    with pytest.raises(InvalidInput, match=why):
        parse_notify_config(raw, base_dir=tmp_path)


def test_a_dead_sink_never_delays_the_others(plane_factory: Any, tmp_path: Path) -> None:
    """Three webhooks, one a black hole (it takes the connection and never answers): the two live
    ones have every notification while the dead one's first attempt is still hanging; the entry
    then waits for the dead sink alone, and a later notification reaches the live ones too."""
    import asyncio
    import socket

    from custos.core.canonical import decode_canonical

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # the kernel completes the handshake; nobody ever reads or answers
    live = [Receiver(), Receiver()]
    try:
        (tmp_path / "s").write_bytes(SECRET)
        secret = str(tmp_path / "s")
        hooks = [{"name": "dead", "url": f"http://127.0.0.1:{hole.getsockname()[1]}/", "secret_file": secret,
                  "timeout_s": 5, "max_attempts": 1}]
        hooks += [{"name": f"live-{i}", "url": r.url, "secret_file": secret} for i, r in enumerate(live)]
        plane: Plane = plane_factory(notify={"log": False, "webhook": hooks})
        for i, name in enumerate(("gpu-7", "gpu-8")):
            plane.enroll(name)
            plane.report(name, {f"/scratch/{i}.safetensors": bytes([i + 4]) * 3000})
            plane.round()
            queued = plane.run(plane.store.range("notify/outbox/"))
            assert queued, "the incident's notification is queued"
            hanging = asyncio.run_coroutine_threadsafe(plane.rt.notifier.dispatch_once(), plane.loop)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(len(r.requests) >= 1 + i for r in live):
                time.sleep(0.02)
            assert all(len(r.requests) >= 1 + i for r in live), "the live sinks were served"
            assert not hanging.done(), "... while the dead sink's attempt still hangs"

            def pending() -> list[list[str]]:
                return [decode_canonical(e.value)["pending"] for e in plane.run(plane.store.range("notify/outbox/"))]

            # A live sink's answer is recorded in the outbox just after the sink has the request.
            deadline = time.monotonic() + 3  # well inside the dead sink's 5 s timeout
            while time.monotonic() < deadline and any(p != ["dead"] for p in pending()):
                time.sleep(0.02)
            assert all(p == ["dead"] for p in pending()), f"only the dead sink is pending: {pending()}"
            assert not hanging.done(), "... while the dead sink's attempt still hangs"
            hanging.cancel()
        for r in live:
            seen: set[str] = set()
            for headers, body in r.requests:
                verify_webhook(SECRET, body, headers, seen=seen)
    finally:
        hole.close()
        for r in live:
            r.close()
