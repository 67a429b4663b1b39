"""`/metrics` of a real control plane, scraped over HTTP; the example alerting rules
use only what it exports."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from custos.controlplane.audit import Caller
from custos.controlplane.metrics import parse_metrics_config
from custos.errors import InvalidInput
from tests import ROOT
from tests.controlplane.incidents.conftest import SEC, Plane, tree, weights


def scrape(plane: Plane) -> dict[str, float]:
    plane.run(plane.rt.metrics.refresh())  # type: ignore[union-attr]
    port = plane.rt.metrics.port  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_endpoint(plane_factory: Any, tmp_path: Path) -> None:
    plane: Plane = plane_factory(metrics={"listen": "127.0.0.1:0", "refresh_s": 60})
    plane.model("m1", hosts=["gpu-*"], paths=["/models/*"])
    w = weights(tmp_path / "w", 31)
    aid = plane.push("m1", w)
    gpu = plane.enroll("gpu-1")
    plane.enroll("gpu-2")
    plane.run(plane.cp.custody.revoke_leases(["gpu-2"]))
    plane.pull(gpu, aid, tmp_path / "p")
    plane.report("gpu-1", tree(w, "/models/m1"))
    plane.unwrap(Caller(principal="mallory", role="auditor", host="10.6.6.6", request_id="x"), aid)
    plane.round()
    m = scrape(plane)
    assert m['custos_copies{form="ciphertext",state="present"}'] == 1
    assert m['custos_copies{form="plaintext",state="present"}'] == 1
    assert m['custos_hosts{lease_state="live"}'] == 1 and m['custos_hosts{lease_state="revoked"}'] == 1
    assert m['custos_unwraps_total{result="ok"}'] == 2
    assert m['custos_alerts_total{rule="unwrap-unauthorized"}'] == 1
    assert m['custos_incidents{status="open"}'] == 1
    assert m['custos_incidents_open{time_left="48h_to_72h"}'] == 1
    assert m['custos_incidents_open{time_left="under_24h"}'] == 0
    [deadline] = [k for k in m if k.startswith("custos_incident_report_deadline_seconds{")]
    assert 'model="m1"' in deadline and 'category="c2"' in deadline

    plane.connect("gpu-1")
    plane.order("halt", ["m1"])
    with pytest.raises(Exception, match="no live custody lease"):
        plane.unwrap(gpu, aid)  # the halt revoked its lease
    with pytest.raises(Exception, match="halted"):
        plane.unwrap(SEC, aid)
    plane.advance(50)
    plane.round()
    m = scrape(plane)
    assert m['custos_orders{state="executing"}'] == 1
    assert m['custos_unwraps_total{result="ModelNotActive"}'] == 1
    assert m['custos_unwraps_total{result="LeaseNotLive"}'] == 1
    assert m['custos_incidents_open{time_left="under_24h"}'] == 1
    # gpu-1 never acked the halt: a new incident, 50 hours after the first one (out of its window)
    assert m['custos_alerts_total{rule="order-ack-missing"}'] == 1
    assert m['custos_incidents_open{time_left="48h_to_72h"}'] == 1
    assert m["custos_metrics_refresh_timestamp_seconds"] > 0


def test_example_alerting_rules_use_exported_metrics() -> None:
    text = (ROOT / "deploy" / "prometheus" / "custos-alerts.yml").read_text()
    exprs = re.findall(r"expr:\s*(.+)", text)
    assert exprs and "alert: CustosIncidentReportDueWithin24h" in text
    exported = {"custos_incidents_open", "custos_incident_report_deadline_seconds",
                "custos_metrics_refresh_timestamp_seconds", "custos_alerts_total", "custos_hosts",
                "custos_unwraps_total", "custos_orders", "custos_copies", "custos_incidents",
                "custos_keys_ready", "custos_keys_token_ttl_seconds"}  # the last two: keys/health.py
    for expr in exprs:
        for name in re.findall(r"\b(custos_[a-z_0-9]+)", expr):
            assert name in exported, f"{name} in the alerting rules is not a metric Custos exports"
    assert 'custos_incidents_open{time_left="under_24h"}' in text
    assert 'custos_incidents_open{time_left="overdue"}' in text


@pytest.mark.parametrize(("raw", "why"), [
    ({"listen": "127.0.0.1"}, "HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, "HOST:PORT"),
    ({"refresh_s": 0}, "refresh_s"),
    ({"port": 9464}, "unknown key"),
    ({"listen": ":9464", "tls_cert_file": "c.pem"}, "go together"),
])
def test_bad_metrics_config(raw: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_metrics_config(raw)


def test_metrics_port_in_use_is_a_clear_error(plane: Plane) -> None:
    from custos.controlplane.metrics import MetricsServer

    busy = MetricsServer(plane.store, parse_metrics_config({"listen": "127.0.0.1:0"}))
    port = busy.start()
    try:
        with pytest.raises(InvalidInput, match=f"cannot listen on 127.0.0.1:{port}"):
            MetricsServer(plane.store, parse_metrics_config({"listen": f"127.0.0.1:{port}"})).start()
    finally:
        busy.close()
