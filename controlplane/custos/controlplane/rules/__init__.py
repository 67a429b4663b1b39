"""Anomaly rules: the ``[rules]`` config (``config``) and the engine that turns audit
events, custody findings, orders and Vault's audit log into alerts (``engine``)."""

from custos.controlplane.rules.config import RulesConfig, RuleSettings, parse_rules_config, rule_setting_key
from custos.controlplane.rules.engine import ALERTS_PREFIX, CURSOR_KEY, RulesEngine

__all__ = [
    "ALERTS_PREFIX",
    "CURSOR_KEY",
    "RuleSettings",
    "RulesConfig",
    "RulesEngine",
    "parse_rules_config",
    "rule_setting_key",
]
