"""Completion reports tell the truth first: the verdict table, n/a without hosts, RFC 3339
times, and plots and HTML that name what they show and escape what hosts report."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from custos.core.reports import (
    halt_stats,
    order_report_html,
    order_report_markdown,
    rfc3339,
    time_to_halt_png,
    time_to_halt_svg,
    verdict,
)

SVG = "{http://www.w3.org/2000/svg}"


def host(name: str, secs: float | None = 0.5, **kw: Any) -> dict[str, Any]:
    if secs is None:
        return {"host": name, "acked": False, "outcome": "unreachable", "lease_state": "lapsed",
                "fail_closed_deadline_ns": 1_800_000_000_000_000_000, **kw}
    return {"host": name, "acked": True, "outcome": "halted", "verified": True, "seconds_to_ack": secs,
            "seconds_to_halt": secs, "pids_stopped": [41], "paths_wiped": ["/x"], "remaining": [],
            "would_stop": [], **kw}


def copy_row(state: str, location: str = "gpu-1:/models/x") -> dict[str, Any]:
    return {"model": "m", "artifact_id": "a" * 64, "location_kind": "host-path", "location": location,
            "host": "gpu-1", "form": "plaintext", "state": state, "evidence": "seen"}


def report(hosts: list[dict[str, Any]], copies: list[dict[str, Any]], state: str = "complete") -> dict[str, Any]:
    return {"order": {"id": "f" * 64, "action": "halt", "models": ["m"], "artifacts": ["a" * 64], "drill": False,
                      "reason": "r", "signer_set_version": 1, "sequence": 3},
            "state": state, "proposed_by": "sec1", "signed_by": ["k1", "k2", "k3"],
            "quorum_at_ns": 1_796_000_000_123_000_000, "completed_at_ns": 1_796_000_001_000_000_000,
            "hosts": hosts, "copies": copies}


@pytest.mark.parametrize(("hosts", "copies", "state", "want"), [
    ([host("a"), host("b")], [copy_row("wiped"), copy_row("stopped")], "complete", "complete"),
    ([host("a")], [copy_row("wiped"), copy_row("residual")], "complete", "incomplete — 1 residual copy"),
    ([host("a")], [copy_row("residual"), copy_row("residual")], "complete", "incomplete — 2 residual copies"),
    ([host("a"), host("b", None)], [], "complete", "incomplete — 1 host without an ack"),
    ([host("a", verified=False)], [], "complete", "incomplete — 1 host refused or did not verify the order"),
    ([host("a", outcome="refused")], [], "complete", "incomplete — 1 host refused or did not verify the order"),
    ([host("a")], [], "executing", "incomplete — still executing"),
    ([host("a")], [], "expired", "incomplete — order expired"),
    ([host("a", None), host("b", None)], [copy_row("residual")], "complete",
     "incomplete — 1 residual copy, 2 hosts without an ack"),
    ([host("a", remaining=["pid 9: still running", "not wiped: /x"]), host("b")], [], "complete",
     "incomplete — 2 items remaining on 1 host"),
])
def test_verdict(hosts: list[dict[str, Any]], copies: list[dict[str, Any]], state: str, want: str) -> None:
    data = report(hosts, copies, state)
    assert verdict(data)["text"] == want
    md = order_report_markdown(data)
    assert md.splitlines()[2] == f"**{want}**", "the verdict is in the report's first lines"
    assert want in order_report_html(data)


def test_no_hosts_says_na_not_zero() -> None:
    data = report([], [])
    st = halt_stats(data)
    assert st["p50"] is None and st["p99"] is None and st["max"] is None
    md = order_report_markdown(data)
    assert "p50 n/a, p99 n/a, max n/a over 0 of 0 hosts" in md and "0.000" not in md
    svg = time_to_halt_svg(data)
    assert "no host acked" in svg
    ET.fromstring(svg)  # noqa: S314 - our own output
    assert time_to_halt_png(data).startswith(b"\x89PNG")


def test_times_are_rfc3339() -> None:
    assert rfc3339(1_796_000_000_123_000_000) == "2026-11-30T00:53:20.123Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rfc3339(1))
    assert rfc3339(0) == "-"
    assert "quorum at: 2026-11-30T00:53:20.123Z" in order_report_markdown(report([host("a")], []))


def test_svg_is_a_real_plot() -> None:
    hosts = [host(f"gpu-{i}", 0.1 * i) for i in range(1, 8)] + [host("gpu-lost", None)]
    svg = time_to_halt_svg(report(hosts, []))
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "Time from quorum to halt: halt m" in texts
    assert "seconds from quorum to halt (s)" in texts and "hosts, sorted by time to halt (7 acked of 8)" in texts
    assert "p50 0.400 s" in texts and "p99 0.700 s" in texts
    assert len(list(root.iter(f"{SVG}circle"))) == 7 + 1, "one mark per acked host, plus the legend's"
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "gpu-lost: no ack" in titles and "gpu-3: 0.300 s" in titles


def test_hostile_names_are_escaped() -> None:
    evil = "<script>alert(1)</script>"
    data = report([host(evil, 0.2, remaining=[evil])], [copy_row("residual", location=evil)])
    data["order"]["reason"] = evil
    for out in (order_report_html(data), time_to_halt_svg(data)):
        assert "<script>" not in out and "&lt;script&gt;" in out
    ET.fromstring(time_to_halt_svg(data))  # noqa: S314 - our own output
    md = order_report_markdown(copy.deepcopy(data) | {"copies": [copy_row("residual", location="a|b")]})
    assert "a/b" in md, "a pipe cannot break the Markdown table"
