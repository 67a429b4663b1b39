"""Completion reports for orders and drills: statistics, Markdown and a PNG plot.

Pure functions over the data ``OrdersService.report`` returns; the PNG writer
is a few lines of zlib so a report needs no plotting library.
"""

from __future__ import annotations

import datetime as dt
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
    times = [h["seconds_to_halt"] for h in data["hosts"] if h.get("acked") and "seconds_to_halt" in h]
    return {
        "hosts": len(data["hosts"]),
        "acked": len(times),
        "unreachable": [h["host"] for h in data["hosts"] if h.get("outcome") == "unreachable"],
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "max": max(times) if times else 0.0,
    }


def _ts(ns: int) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def order_report_markdown(data: dict[str, Any]) -> str:
    o = data["order"]
    st = halt_stats(data)
    kind = "Drill" if o["drill"] else "Order"
    lines = [
        f"# {kind} report: {o['action']} {', '.join(o['models'])}",
        "",
        f"- order id: `{o['id']}`",
        f"- state: **{data['state']}**",
        f"- reason: {o['reason']}",
        f"- scope: {len(o['models'])} models ({', '.join(o['models'])}), {len(o['artifacts'])} artifacts "
        "(derivatives included transitively)",
        f"- proposed by: {data['proposed_by']}; signed by {len(data['signed_by'])} keys "
        f"(signer-set version {o['signer_set_version']}, sequence {o['sequence']})",
        f"- quorum at: {_ts(data['quorum_at_ns'])}; completed at: {_ts(data['completed_at_ns'])}",
        f"- time from quorum to halt: p50 {st['p50']:.3f} s, p99 {st['p99']:.3f} s, max {st['max']:.3f} s "
        f"over {st['acked']} of {st['hosts']} hosts",
        f"- unreachable hosts: {', '.join(st['unreachable']) or 'none'}",
        *([f"- dry run (drill; nothing stopped): {', '.join(data['dry_run']['models'])} — "
           f"{len(data['dry_run']['artifacts'])} artifacts; what agents would stop is under Hosts"]
          if data.get("dry_run", {}).get("models") else []),
        "",
        "## Hosts",
        "",
        "| host | outcome | verified | s to ack | pids stopped | paths wiped | remaining / would stop |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in data["hosts"]:
        if h.get("acked"):
            rest = "; ".join(h.get("remaining", []) + [f"would stop: {w}" for w in h.get("would_stop", [])])
            lines.append(f"| {h['host']} | {h['outcome']} | {'yes' if h['verified'] else 'NO'} | "
                         f"{h['seconds_to_ack']:.3f} | {', '.join(map(str, h['pids_stopped'])) or '-'} | "
                         f"{len(h['paths_wiped'])} | {rest or '-'} |")
        else:
            lines.append(f"| {h['host']} | {h['outcome']} | - | - | - | - | lease {h.get('lease_state', '?')}, "
                         f"fail-closed deadline {_ts(h.get('fail_closed_deadline_ns', 0))} |")
    lines += ["", "## Copies", "", "| model | artifact | kind | location | form | final state | evidence |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in data["copies"]:
        lines.append(f"| {c['model']} | `{c['artifact_id'][:12]}` | {c['location_kind']} | {c['location']} | "
                     f"{c['form']} | {c['state']} | {c['evidence'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


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
    top = max([b for b, ok in bars if ok] + [st["p99"], 1e-3]) * 1.1
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
    y99 = height - margin - int(plot_h * min(1.0, st["p99"] / top))
    for x in range(margin, width - margin):
        px(x, y99, red)
    return _png(width, height, rows)
