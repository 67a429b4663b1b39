"""Handler of `custos server` (arguments in :mod:`custos.controlplane.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from custos import logs
from custos.controlplane.config import load_config
from custos.controlplane.server import run, run_loop
from custos.errors import InvalidInput


def cmd_server(ns: argparse.Namespace, out: Any) -> int:
    cfg = load_config(Path(ns.config) if ns.config else None)
    if ns.listen:
        cfg.listen = ns.listen
    if ns.data_dir:
        cfg.data_dir = Path(ns.data_dir)
    if ns.store:
        cfg.store_url = ns.store
    cfg.dev = ns.dev
    if ns.serve:
        cfg.serve = ns.serve
    if ns.log_level:
        cfg.log_level = ns.log_level
    if ns.checkpoint_interval is not None:
        if ns.checkpoint_interval <= 0:
            raise InvalidInput("--checkpoint-interval must be > 0")
        cfg.checkpoint_interval = ns.checkpoint_interval
    if not cfg.dev and cfg.data_dir is not None and cfg.audit_key is None:
        cfg.audit_key = cfg.data_dir / "audit-signing.key"
    try:
        logs.setup(cfg.log_level, json_format=cfg.log_format == "json")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    run_loop(run(cfg))
    return 0
