"""Handlers of `custos agent enroll`, `run` and `apply-order` (arguments in :mod:`custos.agent.cli`).

Each handler is ``fn(ns, out) -> int`` and raises custos.errors on bad input; the
CLI prints the one-line error and picks the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from custos import logs
from custos.agent.config import AgentConfig, default_host_name, dev_config, load_agent_config
from custos.agent.daemon import Agent
from custos.agent.enroll import enroll
from custos.agent.feed import apply_through_drop_dir
from custos.agent.orders import VerifyingOrderHandler
from custos.client.localagent import LocalClient
from custos.core.hosts import validate_host_name
from custos.core.orderfile import MAX_ORDER_FILE_BYTES
from custos.errors import InvalidInput

# -- agent enroll ---------------------------------------------------------------------------


def cmd_agent_enroll(ns: argparse.Namespace, out: Any) -> int:
    addr = ns.enroll_addr or os.environ.get("CUSTOS_ENROLL_ADDR")
    ca = ns.ca or os.environ.get("CUSTOS_CA")
    if not addr:
        raise InvalidInput("--enroll-addr (or CUSTOS_ENROLL_ADDR) is required")
    if not ca:
        raise InvalidInput("--ca (or CUSTOS_CA) is required: the CA that verifies the control plane")
    token = ns.token or os.environ.get("CUSTOS_ENROLL_TOKEN", "")
    if ns.token_file:
        try:
            token = Path(ns.token_file).read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read {ns.token_file}: {exc.strerror}") from None
    name = validate_host_name(ns.name) if ns.name else default_host_name()
    ident = asyncio.run(enroll(enroll_addr=addr, ca_file=Path(ca), name=name, token=token,
                               state_dir=Path(ns.state_dir), server_name=ns.server_name))
    out.emit({"host": ident.name, "cert_sha256": ident.fingerprint, "state_dir": str(Path(ns.state_dir)),
              "lease_ttl_seconds": ident.lease_ttl, "signer_set_pinned": bool(ident.signer_set)},
             f"enrolled host {ident.name}\n  certificate sha256 {ident.fingerprint}\n"
             f"  identity in {ident.directory}\n  lease TTL {ident.lease_ttl} s"
             + ("" if ident.signer_set else "\n  no signer set to pin yet (orders cannot be verified)"))
    return 0


# -- agent run ------------------------------------------------------------------------------


def build_config(ns: argparse.Namespace) -> AgentConfig:
    """The daemon's config from flags. Raises InvalidInput."""
    if ns.dev:
        if not ns.data_dir:
            raise InvalidInput("--dev needs --data-dir (the dev server's data dir)")
        base = load_agent_config(Path(ns.config), dev=True) if ns.config else None
        return dev_config(Path(ns.data_dir), scan=ns.scan, name=ns.name, base=base,
                          state_dir=Path(ns.state_dir) if ns.state_dir else None,
                          socket_path=Path(ns.socket) if ns.socket else None)
    if not ns.config:
        raise InvalidInput("--config FILE is required (or --dev --data-dir D --scan DIR for development)")
    for flag in ("data_dir", "name", "state_dir", "socket"):
        if getattr(ns, flag):
            raise InvalidInput(f"--{flag.replace('_', '-')} is for --dev; set it in the config file")
    if ns.scan:
        raise InvalidInput("--scan is for --dev; set scan.roots in the config file")
    return load_agent_config(Path(ns.config))


def cmd_agent_run(ns: argparse.Namespace, out: Any) -> int:
    cfg = build_config(ns)
    try:
        logs.setup(ns.log_level or cfg.log_level, json_format=cfg.log_format == "json")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    # Orders are acted on only after this agent's own verification against its pinned signer set.
    return asyncio.run(Agent(cfg, order_handler_factory=VerifyingOrderHandler).run())


# -- agent apply-order ----------------------------------------------------------------------


def _ack_text(ack: dict[str, Any]) -> str:
    lines = [f"order {ack.get('order_id') or '(unreadable)'}: {ack.get('outcome', '?')}"
             + ("" if ack.get("verified") else " (not verified: nothing was done)")]
    if ack.get("reason"):
        lines.append(f"  {ack['reason']}")
    if ack.get("pids_stopped"):
        lines.append(f"  pids stopped: {', '.join(str(p) for p in ack['pids_stopped'])}")
    if ack.get("paths_wiped"):
        lines.append(f"  paths wiped: {len(ack['paths_wiped'])}")
    lines += [f"  remaining: {r}" for r in ack.get("remaining", [])[:20]]
    return "\n".join(lines)


def cmd_agent_apply_order(ns: argparse.Namespace, out: Any) -> int:
    """Apply a signed-order file through the running agent; exit 7 when the agent refused it."""
    path = Path(ns.file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        if ns.drop_dir:
            data = os.read(fd, MAX_ORDER_FILE_BYTES + 1)
            if len(data) > MAX_ORDER_FILE_BYTES:
                raise InvalidInput(f"{path}: larger than an order file may be ({MAX_ORDER_FILE_BYTES} bytes)")
            ack = apply_through_drop_dir(Path(ns.drop_dir), data, wait=ns.wait)
        else:
            sock = ns.socket or os.environ.get("CUSTOS_AGENT_SOCKET") or "/run/custos-agent/agent.sock"
            ack = LocalClient(Path(sock), timeout=120).apply_order(fd)
    finally:
        os.close(fd)
    out.emit(ack, _ack_text(ack))
    return 0 if ack.get("verified") else 7
