"""The ``[rules]`` section of the control plane's config: which rules run, how severe
their alerts are, whether they open incidents, and each rule's thresholds.

``parse_rules_config`` turns the raw TOML table into a ``RulesConfig``; unknown
keys and bad values are errors naming the key. A rule's table is its name with
``-`` as ``_`` (``rule_setting_key``). Specified in docs/incidents.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custos.controlplane.vault_audit import VaultAuditConfig
from custos.core.rules import RULES, SEVERITIES, UnwrapRateConfig
from custos.errors import InvalidInput


def rule_setting_key(rule: str) -> str:
    """The config table of a rule: its name with '-' as '_' (``unwrap-rate`` -> ``unwrap_rate``)."""
    return rule.replace("-", "_")


@dataclass(frozen=True, slots=True)
class RuleSettings:
    enabled: bool = True
    severity: str | None = None  # None: the rule's default (custody alerts: as raised)
    incident: bool = True  # alerts of this rule open or join incidents


@dataclass(frozen=True)
class RulesConfig:
    interval_s: float = 2.0
    correlation_window_s: int = 3600
    attribution_lookback_s: int = 7 * 86400
    settings: Mapping[str, RuleSettings] = field(default_factory=dict)
    allowed_roles: frozenset[str] = frozenset({"security-team"})
    unwrap_rate: UnwrapRateConfig = field(default_factory=UnwrapRateConfig)
    order_ack_deadline_s: int = 300
    audit_chain_interval_s: int = 300
    vault_audit: VaultAuditConfig | None = None
    access_holders_cap: int = 0  # 0: no cap, the rule never fires
    access_holders_interval_s: float = 30.0  # how often each model's holders are counted

    def setting(self, rule: str) -> RuleSettings:
        return self.settings.get(rule, RuleSettings())

    def enabled(self, rule: str) -> bool:
        return self.setting(rule).enabled

    def severity(self, rule: str, raised: str = "") -> str:
        s = self.setting(rule).severity
        if s:
            return s
        spec = RULES.get(rule)
        return raised or (spec.severity if spec else "medium")


_COMMON_KEYS = frozenset({"enabled", "severity", "incident"})
_RULE_KEYS: Mapping[str, frozenset[str]] = {
    "unwrap_unauthorized": frozenset({"allowed_roles"}),
    "unwrap_rate": frozenset({"window_s", "max_per_host", "max_per_principal"}),
    "unauthorized_copy": frozenset(),
    "unregistered_weights": frozenset(),
    "tampered_weights": frozenset(),
    "lease_lapsed": frozenset(),
    "order_ack_missing": frozenset({"deadline_s"}),
    "audit_chain_broken": frozenset({"interval_s"}),
    "vault_foreign_access": frozenset({"path", "exclude_accessors", "exclude_display_names",
                                       "exclude_policies", "paths", "key_prefix"}),
    "access_break_glass": frozenset(),
    "access_holders_over_cap": frozenset({"cap", "interval_s"}),
    "open_denied": frozenset(),
    "weights_read": frozenset(),
    "canary_opened": frozenset(),
}
_TOP_KEYS = frozenset({"interval_s", "correlation_window_s", "attribution_lookback_s"})
_ROLES = ("security-team", "agent", "executive", "auditor", "admin", "system")


def _where(table: str, key: str) -> str:
    return f"[rules.{table}] {key}" if table else f"[rules] {key}"


def _int(table: str, raw: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidInput(f"{_where(table, key)} must be an integer from {lo} to {hi}, got {v!r}")
    return v


def _num(table: str, raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo < v <= hi:
        raise InvalidInput(f"{_where(table, key)} must be a number above {lo} and at most {hi}, got {v!r}")
    return float(v)


def _strings(table: str, raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() and len(x) <= 512 for x in v):
        raise InvalidInput(f"{_where(table, key)} must be a list of non-empty strings, got {v!r}")
    return tuple(x.strip() for x in v)


def parse_rules_config(raw: Mapping[str, Any] | None, *, base_dir: Path | None = None) -> RulesConfig:
    """Parse the ``[rules]`` section. Unknown keys and bad values are errors.

    ``base_dir`` resolves a relative Vault audit log path (the config file's
    directory). Raises InvalidInput naming the offending key.
    """
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise InvalidInput("[rules] must be a table")
    unknown = sorted(set(raw) - _TOP_KEYS - set(_RULE_KEYS))
    if unknown:
        raise InvalidInput(f"[rules] unknown key(s) {unknown}: want {sorted(_TOP_KEYS)} or a table per rule "
                           f"{sorted(_RULE_KEYS)}")
    interval = _num("", raw, "interval_s", 2.0, 0.0, 3600.0)
    window = _int("", raw, "correlation_window_s", 3600, 1, 30 * 86400)
    lookback = _int("", raw, "attribution_lookback_s", 7 * 86400, 0, 365 * 86400)
    settings: dict[str, RuleSettings] = {}
    tables: dict[str, dict[str, Any]] = {}
    for rule in RULES:
        table = rule_setting_key(rule)
        t = raw.get(table, {})
        if not isinstance(t, dict):
            raise InvalidInput(f"[rules] {table} must be a table, e.g. {table} = {{ enabled = true }}")
        extra = sorted(set(t) - _COMMON_KEYS - _RULE_KEYS[table])
        if extra:
            raise InvalidInput(f"[rules.{table}] unknown key(s) {extra}: want "
                               f"{sorted(_COMMON_KEYS | _RULE_KEYS[table])}")
        enabled, incident, severity = t.get("enabled", True), t.get("incident", True), t.get("severity")
        if not isinstance(enabled, bool) or not isinstance(incident, bool):
            raise InvalidInput(f"[rules.{table}] enabled and incident must be true or false")
        if severity is not None and severity not in SEVERITIES:
            raise InvalidInput(f"[rules.{table}] severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        settings[rule] = RuleSettings(enabled=enabled, severity=severity, incident=incident)
        tables[table] = t

    roles = _strings("unwrap_unauthorized", tables["unwrap_unauthorized"], "allowed_roles") or ("security-team",)
    bad_roles = [r for r in roles if r not in _ROLES or r == "agent"]
    if bad_roles:
        raise InvalidInput(f"[rules.unwrap_unauthorized] allowed_roles: {bad_roles} — want roles from "
                           f"{[r for r in _ROLES if r != 'agent']} (agents are checked against custody policies)")
    ur = tables["unwrap_rate"]
    rate = UnwrapRateConfig(
        window_s=_int("unwrap_rate", ur, "window_s", 60, 1, 86400),
        max_per_host=_int("unwrap_rate", ur, "max_per_host", 20, 1, 10**9),
        max_per_principal=_int("unwrap_rate", ur, "max_per_principal", 50, 1, 10**9),
    )
    deadline = _int("order_ack_missing", tables["order_ack_missing"], "deadline_s", 300, 1, 7 * 86400)
    chain = _int("audit_chain_broken", tables["audit_chain_broken"], "interval_s", 300, 1, 7 * 86400)
    holders = tables["access_holders_over_cap"]
    cap = _int("access_holders_over_cap", holders, "cap", 0, 0, 10**6)
    holders_every = _num("access_holders_over_cap", holders, "interval_s", 30.0, 0.0, 86400.0)

    vault: VaultAuditConfig | None = None
    vt = tables["vault_foreign_access"]
    if "path" in vt:
        path = vt["path"]
        if not isinstance(path, str) or not path.strip():
            raise InvalidInput("[rules.vault_foreign_access] path must be the file audit device's log file")
        p = Path(path)
        if not p.is_absolute():
            p = (base_dir or Path.cwd()) / p
        accessors = _strings("vault_foreign_access", vt, "exclude_accessors")
        names = _strings("vault_foreign_access", vt, "exclude_display_names")
        policies = _strings("vault_foreign_access", vt, "exclude_policies")
        if not (accessors or names or policies):
            # Without one, every operation of the control plane itself would be an alert:
            # refuse rather than drown the real ones.
            raise InvalidInput("[rules.vault_foreign_access] needs at least one of exclude_accessors, "
                               "exclude_display_names, exclude_policies: how to recognize the control "
                               "plane's own token")
        patterns = _strings("vault_foreign_access", vt, "paths") or ("transit/*/custos-*",)
        prefix = vt.get("key_prefix", "custos-")
        if not isinstance(prefix, str) or not prefix or "/" in prefix or "*" in prefix:
            raise InvalidInput("[rules.vault_foreign_access] key_prefix must be a plain prefix such as \"custos-\"")
        vault = VaultAuditConfig(path=p, exclude_accessors=frozenset(accessors),
                                 exclude_display_names=frozenset(names), exclude_policies=frozenset(policies),
                                 paths=patterns, key_prefix=prefix)
    elif any(k in vt for k in _RULE_KEYS["vault_foreign_access"]):
        raise InvalidInput("[rules.vault_foreign_access] needs path (the file audit device's log file)")
    return RulesConfig(interval_s=interval, correlation_window_s=window, attribution_lookback_s=lookback,
                       settings=settings, allowed_roles=frozenset(roles), unwrap_rate=rate,
                       order_ack_deadline_s=deadline, audit_chain_interval_s=chain, vault_audit=vault,
                       access_holders_cap=cap, access_holders_interval_s=holders_every)

