"""Completion reports for orders and drills: statistics, the verdict, Markdown, HTML,
an SVG plot and a PNG plot.

Pure functions over the data ``OrdersService.report`` returns. The verdict tells
the truth before anything else: an order whose every host acked can still be
**incomplete** — copies that remain (a plaintext copy no agent manages, a process
that would not die), hosts that never answered, acks that did not verify. Times
are RFC 3339 (UTC, milliseconds). The SVG and PNG writers need no plotting library.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import struct
import zlib
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def halt_stats(data: dict[str, Any]) -> dict[str, Any]:
    """Counts and percentiles of the time from quorum to halt; p50/p99/max are None
    without an acked host (say n/a, never 0)."""
    times = [h["seconds_to_halt"] for h in data["hosts"] if h.get("acked") and "seconds_to_halt" in h]
    return {
        "hosts": len(data["hosts"]),
        "acked": len(times),
        "unreachable": [h["host"] for h in data["hosts"] if h.get("outcome") in ("unreachable", "pending")],
        "p50": percentile(times, 50) if times else None,
        "p99": percentile(times, 99) if times else None,
        "max": max(times) if times else None,
    }


def verdict(data: dict[str, Any]) -> dict[str, Any]:
    """Whether the order did everything it says, and if not, why: ``complete`` (bool),
    ``text`` (``complete``, or ``incomplete — 2 residual copies, 1 host unreachable``),
    and the counts. A drill's dry run is not a residual."""
    residual = [c for c in data.get("copies", []) if c.get("state") == "residual"]
    st = halt_stats(data)
    unverified = [h["host"] for h in data["hosts"] if h.get("acked") and not h.get("verified")]
    refused = [h["host"] for h in data["hosts"] if h.get("acked") and h.get("outcome") == "refused"]
    parts = []
    if data.get("state") not in ("complete", "executing", None):
        parts.append(f"order {data.get('state')}")
    if residual:
        parts.append(f"{len(residual)} residual cop{'y' if len(residual) == 1 else 'ies'}")
    if st["unreachable"]:
        n = len(st["unreachable"])
        parts.append(f"{n} host{'' if n == 1 else 's'} without an ack")
    if unverified or refused:
        n = len(set(unverified) | set(refused))
        parts.append(f"{n} host{'' if n == 1 else 's'} refused or did not verify the order")
    # What an acking host says remains (a process it could not stop or inspect, a file it could
    # not wipe): the signed report counts each line as residual too (custos.core.evidence).
    left = [h for h in data["hosts"] if h.get("acked") and h.get("outcome") != "refused" and h.get("remaining")]
    if left:
        n = sum(len(h["remaining"]) for h in left)
        parts.append(f"{n} item{'' if n == 1 else 's'} remaining on {len(left)} host{'' if len(left) == 1 else 's'}")
    if data.get("state") == "executing" and not parts:
        parts.append("still executing")
    return {"complete": not parts, "text": "complete" if not parts else "incomplete — " + ", ".join(parts),
            "residual": len(residual), "unreachable": len(st["unreachable"]), "hosts_with_remaining": len(left),
            "unverified": len(set(unverified) | set(refused))}


def rfc3339(ns: int) -> str:
    """Unix nanoseconds as RFC 3339 UTC with milliseconds ("2026-12-01T17:56:53.123Z"); "-" for 0."""
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_ts = rfc3339


def _secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f} s"


def _summary_lines(data: dict[str, Any]) -> list[tuple[str, str]]:
    o = data["order"]
    st = halt_stats(data)
    rows = [
        ("order id", o["id"]),
        ("state", data["state"]),
        ("reason", o["reason"]),
        ("scope", f"{len(o['models'])} models ({', '.join(o['models'])}), {len(o['artifacts'])} artifacts "
                  "(derivatives included transitively)"),
        ("proposed by", f"{data['proposed_by']}; signed by {len(data['signed_by'])} keys "
                        f"(signer-set version {o['signer_set_version']}, sequence {o['sequence']})"),
        ("quorum at", f"{_ts(data['quorum_at_ns'])}; completed at: {_ts(data['completed_at_ns'])}"),
        ("time from quorum to halt", f"p50 {_secs(st['p50'])}, p99 {_secs(st['p99'])}, max {_secs(st['max'])} "
                                     f"over {st['acked']} of {st['hosts']} hosts"),
        ("hosts without an ack", ", ".join(st["unreachable"]) or "none"),
    ]
    if data.get("dry_run", {}).get("models"):
        rows.append(("dry run (drill; nothing stopped)", f"{', '.join(data['dry_run']['models'])} — "
                     f"{len(data['dry_run']['artifacts'])} artifacts; what agents would stop is under Hosts"))
    return rows


def _host_cells(h: dict[str, Any]) -> list[str]:
    if h.get("acked"):
        rest = "; ".join(h.get("remaining", []) + [f"would stop: {w}" for w in h.get("would_stop", [])])
        return [h["host"], h["outcome"], "yes" if h["verified"] else "NO", f"{h['seconds_to_ack']:.3f}",
                ", ".join(map(str, h["pids_stopped"])) or "-", str(len(h["paths_wiped"])), rest or "-"]
    return [h["host"], h["outcome"], "-", "-", "-", "-",
            f"lease {h.get('lease_state', '?')}, fail-closed deadline {_ts(h.get('fail_closed_deadline_ns', 0))}"]


HOST_COLUMNS = ["host", "outcome", "verified", "s to ack", "pids stopped", "paths wiped", "remaining / would stop"]
COPY_COLUMNS = ["model", "artifact", "kind", "location", "form", "final state", "evidence"]


def _copy_cells(c: dict[str, Any]) -> list[str]:
    return [c["model"], c["artifact_id"][:12], c["location_kind"], c["location"], c["form"], c["state"],
            c["evidence"]]


def order_report_markdown(data: dict[str, Any]) -> str:
    o = data["order"]
    kind = "Drill" if o["drill"] else "Order"
    v = verdict(data)
    lines = [f"# {kind} report: {o['action']} {', '.join(o['models'])}", "",
             f"**{v['text']}**", ""]
    for k, val in _summary_lines(data):
        lines.append(f"- {k}: `{val}`" if k == "order id" else
                     f"- {k}: **{val}**" if k == "state" else f"- {k}: {val}")
    lines += ["", "## Hosts", "", "| " + " | ".join(HOST_COLUMNS) + " |",
              "| " + " | ".join("---" for _ in HOST_COLUMNS) + " |"]
    for h in data["hosts"]:
        lines.append("| " + " | ".join(x.replace("|", "/") for x in _host_cells(h)) + " |")
    lines += ["", "## Copies", "", "| " + " | ".join(COPY_COLUMNS) + " |",
              "| " + " | ".join("---" for _ in COPY_COLUMNS) + " |"]
    for c in data["copies"]:
        cells = _copy_cells(c)
        cells[1] = f"`{cells[1]}`"
        lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def order_report_html(data: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (the SVG plot inline; everything escaped)."""
    o = data["order"]
    v = verdict(data)
    e = html.escape
    title = f"{'Drill' if o['drill'] else 'Order'} report: {o['action']} {', '.join(o['models'])}"

    def table(cols: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{e(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{e(x)}</td>" for x in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    summary = "".join(f"<tr><th>{e(k)}</th><td>{e(val)}</td></tr>" for k, val in _summary_lines(data))
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title><style>"
        "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}th{background:#f4f4f4}"
        ".ok{color:#175e17}.bad{color:#a00}code{font-size:12px}</style></head><body>"
        f"<h1>{e(title)}</h1><p class=\"{'ok' if v['complete'] else 'bad'}\"><strong>{e(v['text'])}</strong></p>"
        f"<table>{summary}</table>{time_to_halt_svg(data)}"
        f"<h2>Hosts</h2>{table(HOST_COLUMNS, [_host_cells(h) for h in data['hosts']])}"
        f"<h2>Copies</h2>{table(COPY_COLUMNS, [_copy_cells(c) for c in data['copies']])}"
        "</body></html>\n")


def time_to_halt_svg(data: dict[str, Any], *, width: int = 720, height: int = 360) -> str:
    """The time from quorum to halt, one mark per host (sorted), with p50 and p99 lines, a
    title, axes with units and a legend. Hosts without an ack are grey crosses on the top
    edge. Everything is escaped; the SVG stands alone or inline in HTML."""
    e = html.escape
    o = data["order"]
    st = halt_stats(data)
    acked = sorted((h["seconds_to_halt"], h["host"]) for h in data["hosts"]
                   if h.get("acked") and "seconds_to_halt" in h)
    missing = sorted(h["host"] for h in data["hosts"] if not (h.get("acked") and "seconds_to_halt" in h))
    left, right, top, bottom = 70, 150, 40, 50
    pw, ph = width - left - right, height - top - bottom
    ymax = _nice(max([t for t, _ in acked] + [1e-3]) * 1.15)
    n = len(acked) + len(missing)

    def x(i: int) -> float:
        return left + (i + 0.5) * pw / max(1, n)

    def y(t: float) -> float:
        return top + ph - ph * min(1.0, t / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
           f'{e("Time from quorum to halt: " + o["action"] + " " + ", ".join(o["models"]))}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>']
    for k in range(6):
        t = ymax * k / 5
        out.append(f'<line x1="{left - 4}" y1="{y(t):.1f}" x2="{left}" y2="{y(t):.1f}" stroke="black"/>'
                   f'<text x="{left - 7}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    out.append(f'<text transform="translate(18,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
               'seconds from quorum to halt (s)</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">'
               f'hosts, sorted by time to halt ({len(acked)} acked of {n})</text>')
    label_every = max(1, n // 12)
    for i, (t, host) in enumerate(acked):
        out.append(f'<circle cx="{x(i):.1f}" cy="{y(t):.1f}" r="4" fill="#3465a4"><title>{e(host)}: '
                   f'{t:.3f} s</title></circle>')
        if i % label_every == 0:
            out.append(f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="10">'
                       f'{e(host[:14])}</text>')
    for j, host in enumerate(missing):
        cx, cy = x(len(acked) + j), top + 6
        out.append(f'<path d="M{cx - 4:.1f},{cy - 4} l8,8 m0,-8 l-8,8" stroke="#888" stroke-width="2">'
                   f'<title>{e(host)}: no ack</title></path>')
    for _, val, color in (("p50", st["p50"], "#2e7d32"), ("p99", st["p99"], "#c00")):
        if val is not None:
            out.append(f'<line x1="{left}" y1="{y(val):.1f}" x2="{left + pw}" y2="{y(val):.1f}" stroke="{color}" '
                       f'stroke-dasharray="6,4"/>')
    lx = left + pw + 14
    legend = [("#3465a4", "circle", "one host's ack"), ("#888", "cross", "no ack")]
    legend += [(c, "line", f"{nm} {_secs(v)}") for nm, v, c in (("p50", st["p50"], "#2e7d32"),
                                                                   ("p99", st["p99"], "#c00"))]
    for k, (color, shape, text) in enumerate(legend):
        ly = top + 10 + 20 * k
        if shape == "circle":
            out.append(f'<circle cx="{lx + 6}" cy="{ly}" r="4" fill="{color}"/>')
        elif shape == "cross":
            out.append(f'<path d="M{lx + 2},{ly - 4} l8,8 m0,-8 l-8,8" stroke="{color}" stroke-width="2"/>')
        else:
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 14}" y2="{ly}" stroke="{color}" '
                       f'stroke-dasharray="6,4"/>')
        out.append(f'<text x="{lx + 20}" y="{ly + 4}">{e(text)}</text>')
    if not acked:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" fill="#666">'
                   'no host acked: no times to plot</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nice(v: float) -> float:
    """The next 1, 2 or 5 times a power of ten at or above ``v``."""
    exp = math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * 10 ** exp >= v:
            return float(m * 10 ** exp)
    return float(10 ** (exp + 1))


# -- PNG ----------------------------------------------------------------------------


def _png(width: int, height: int, rows: list[bytearray]) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def time_to_halt_png(data: dict[str, Any], *, width: int = 640, height: int = 320) -> bytes:
    """A bar per acked host (sorted), height = seconds from quorum to halt; a red
    line at p99. Unreachable hosts are grey bars at full height."""
    bars = sorted((h.get("seconds_to_halt", 0.0), h.get("acked", False)) for h in data["hosts"])
    st = halt_stats(data)
    top = max([b for b, ok in bars if ok] + [st["p99"] or 0.0, 1e-3]) * 1.1
    white, blue, grey, red, black = (255, 255, 255), (52, 101, 164), (170, 170, 170), (204, 0, 0), (0, 0, 0)
    rows = [bytearray(white * width) for _ in range(height)]

    def px(x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            rows[y][3 * x:3 * x + 3] = bytes(c)

    margin = 20
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    for x in range(margin, width - margin):
        px(x, height - margin, black)
    for y in range(margin, height - margin):
        px(margin, y, black)
    n = max(1, len(bars))
    bw = max(1, plot_w // n)
    for i, (secs, ok) in enumerate(bars):
        h = plot_h if not ok else int(plot_h * min(1.0, secs / top))
        color = blue if ok else grey
        x0 = margin + 1 + i * bw
        for x in range(x0, min(x0 + max(1, bw - 1), width - margin)):
            for y in range(height - margin - h, height - margin):
                px(x, y, color)
    y99 = height - margin - int(plot_h * min(1.0, (st["p99"] or 0.0) / top))
    for x in range(margin, width - margin):
        px(x, y99, red)
    return _png(width, height, rows)
