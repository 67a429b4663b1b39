"""`[rules]`: a good section parses to the documented values; a bad one is one clear
error at start-up, before any loop runs or any port is bound."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.controlplane.audit import AuditLog
from custos.controlplane.incidents.runtime import attach
from custos.controlplane.rules.config import parse_rules_config, rule_setting_key
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.rules import RULES
from custos.errors import InvalidInput
from tests import ROOT
from tests.servers.ports import free_port

GOOD = """
[rules]
interval_s = 1.5
correlation_window_s = 1800
attribution_lookback_s = 86400
unwrap_unauthorized = { allowed_roles = ["security-team", "admin"] }
unwrap_rate = { window_s = 60, max_per_host = 20, max_per_principal = 50 }
unregistered_weights = { severity = "low", incident = false }
order_ack_missing = { deadline_s = 120 }
audit_chain_broken = { interval_s = 600 }
lease_lapsed = { enabled = false }
[rules.vault_foreign_access]
path = "audit/vault.log"
exclude_accessors = ["hmac-sha256:ab"]
exclude_policies = ["custos-controlplane"]
"""


def test_good_rules_config(tmp_path: Path) -> None:
    cfg = parse_rules_config(tomllib.loads(GOOD)["rules"], base_dir=tmp_path)
    assert (cfg.interval_s, cfg.correlation_window_s, cfg.attribution_lookback_s) == (1.5, 1800, 86400)
    assert cfg.allowed_roles == {"security-team", "admin"}
    assert (cfg.unwrap_rate.window_s, cfg.unwrap_rate.max_per_host, cfg.unwrap_rate.max_per_principal) == (60, 20, 50)
    assert cfg.severity("unregistered-weights") == "low" and not cfg.setting("unregistered-weights").incident
    assert cfg.severity("unauthorized-copy", "high") == "high" and cfg.severity("tampered-weights") == "high"
    assert cfg.order_ack_deadline_s == 120 and cfg.audit_chain_interval_s == 600
    assert not cfg.enabled("lease-lapsed") and cfg.enabled("unwrap-rate")
    assert cfg.vault_audit is not None and cfg.vault_audit.path == tmp_path / "audit" / "vault.log"
    assert cfg.vault_audit.paths == ("transit/*/custos-*",)
    empty = parse_rules_config({})
    assert empty.vault_audit is None and empty.unwrap_rate.max_per_host == 20 and empty.order_ack_deadline_s == 300


def test_every_rule_has_a_config_table_and_a_category() -> None:
    raw = {rule_setting_key(r): {"enabled": True} for r in RULES}
    parse_rules_config(raw)
    assert {spec.category for spec in RULES.values()} <= {"c1", "c2", "c3", "c4"}


def test_docs_config_example_parses() -> None:
    text = (ROOT / "docs" / "incidents.md").read_text()
    block = text.split("```toml", 1)[1].split("```", 1)[0]
    raw = tomllib.loads(block)
    for key in ("rules", "notify", "metrics"):
        assert key in raw
    raw["rules"]["vault_foreign_access"]["path"] = "/var/log/openbao/audit.log"
    parse_rules_config(raw["rules"])


@pytest.mark.parametrize(("raw", "why"), [
    ({"unwrap_rates": {}}, r"\[rules\] unknown key\(s\) \['unwrap_rates'\]"),
    ({"unwrap_rate": {"window": 60}}, r"\[rules.unwrap_rate\] unknown key\(s\) \['window'\]"),
    ({"unwrap_rate": {"window_s": 0}}, r"\[rules.unwrap_rate\] window_s must be an integer from 1 to 86400, got 0"),
    ({"unwrap_rate": {"max_per_host": "20"}}, r"max_per_host must be an integer"),
    ({"unwrap_rate": {"max_per_principal": True}}, r"max_per_principal must be an integer"),
    ({"unwrap_rate": {"window_s": 1.5}}, r"window_s must be an integer"),
    ({"unwrap_rate": 60}, r"\[rules\] unwrap_rate must be a table"),
    ({"interval_s": -1}, r"\[rules\] interval_s must be a number above 0"),
    ({"correlation_window_s": 0}, r"correlation_window_s must be an integer from 1"),
    ({"lease_lapsed": {"enabled": "no"}}, r"enabled and incident must be true or false"),
    ({"tampered_weights": {"severity": "urgent"}}, r"severity must be one of low, medium, high, critical"),
    ({"order_ack_missing": {"deadline_s": 0}}, r"deadline_s must be an integer from 1"),
    ({"unwrap_unauthorized": {"allowed_roles": ["agent"]}}, r"allowed_roles: \['agent'\]"),
    ({"unwrap_unauthorized": {"allowed_roles": ["root"]}}, r"allowed_roles: \['root'\]"),
    ({"unwrap_unauthorized": {"allowed_roles": "security-team"}}, r"must be a list of non-empty strings"),
    ({"vault_foreign_access": {"path": "/var/log/vault.log"}}, r"needs at least one of exclude_accessors"),
    ({"vault_foreign_access": {"exclude_accessors": ["x"]}}, r"needs path"),
    ({"vault_foreign_access": {"path": "/v.log", "exclude_policies": [""]}}, r"non-empty strings"),
    ({"vault_foreign_access": {"path": "/v.log", "exclude_policies": ["p"], "key_prefix": "custos-*"}},
     r"key_prefix must be a plain prefix"),
])
def test_bad_rules_config_is_a_clear_error(raw: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_rules_config(raw)


async def test_attach_refuses_a_bad_section_before_starting_anything(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    audit = AuditLog(store, Ed25519PrivateKey.generate())
    port = free_port()
    stop = asyncio.Event()
    tasks_before = len(asyncio.all_tasks())
    for rules, notify in (({"unwrap_rate": {"window_s": -5}}, {}), ({}, {"webhook": [{"url": "https://x/"}]})):
        with pytest.raises(InvalidInput):
            await attach(store=store, audit=audit, stop=stop, rules=rules, notify=notify,
                         metrics={"listen": f"127.0.0.1:{port}"})
    assert len(asyncio.all_tasks()) == tasks_before
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # /metrics was never bound
    rt = await attach(store=store, audit=audit, stop=stop, rules={}, notify={}, metrics={})
    assert len(rt.tasks) == 2 and rt.metrics is None
    stop.set()
    await asyncio.gather(*rt.tasks)
    await store.close()


def test_control_plane_start_fails_on_bad_rules(plane_factory: Any) -> None:
    with pytest.raises(InvalidInput, match=r"\[rules.order_ack_missing\] deadline_s"):
        plane_factory(rules={"order_ack_missing": {"deadline_s": "5m"}})
