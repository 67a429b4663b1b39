"""Vault ACL policy parsing and matching (custos.core.vault_policy), table-driven. The same
rules are checked against a real OpenBao in tests/controlplane/test_access_who.py."""

from __future__ import annotations

import pytest

from custos.core.vault_policy import PathRule, effective_rule, parse_policy, path_matches, reaches_key
from custos.errors import InvalidInput
from tests import ROOT


@pytest.mark.parametrize(("pattern", "path", "want"), [
    ("transit/decrypt/custos-m", "transit/decrypt/custos-m", True),
    ("transit/decrypt/custos-m", "transit/decrypt/custos-m2", False),
    ("transit/decrypt/custos-*", "transit/decrypt/custos-m", True),
    ("transit/decrypt/custos-*", "transit/decrypt/custos-m/x", True),  # a glob is a prefix
    ("transit/decrypt/custos-*", "transit/decrypt/other", False),
    ("transit/*", "transit/decrypt/custos-m", True),
    ("*", "transit/decrypt/custos-m", True),
    ("transit/+/custos-m", "transit/decrypt/custos-m", True),
    ("transit/+/custos-m", "transit/datakey/plaintext/custos-m", False),  # + is one segment
    ("transit/datakey/+/custos-*", "transit/datakey/plaintext/custos-m", True),
    ("+/decrypt/custos-*", "transit/decrypt/custos-m", True),
    ("+/decrypt/custos-*", "other/transit/decrypt/custos-m", False),
    ("transit/+/*", "transit/decrypt/custos-m", True),
    ("transit/decrypt/", "transit/decrypt/custos-m", False),
])
def test_path_matches(pattern: str, path: str, want: bool) -> None:
    assert path_matches(pattern, path) is want


@pytest.mark.parametrize(("patterns", "path", "winner"), [
    # an exact path beats every glob
    (["transit/decrypt/custos-m", "transit/decrypt/*", "*"], "transit/decrypt/custos-m", "transit/decrypt/custos-m"),
    # the first wildcard later wins
    (["transit/*", "transit/decrypt/*"], "transit/decrypt/custos-m", "transit/decrypt/*"),
    (["+/decrypt/custos-m", "transit/+/custos-m"], "transit/decrypt/custos-m", "transit/+/custos-m"),
    # a trailing glob loses to none
    (["transit/decrypt/+", "transit/decrypt/*"], "transit/decrypt/custos-m", "transit/decrypt/+"),
    # longer wins
    (["transit/decrypt/c*", "transit/decrypt/custos-*"], "transit/decrypt/custos-m", "transit/decrypt/custos-*"),
    (["secret/*"], "transit/decrypt/custos-m", None),
])
def test_effective_rule_priority(patterns: list[str], path: str, winner: str | None) -> None:
    rules = [PathRule(p, frozenset({"update"})) for p in patterns]
    rule = effective_rule(rules, path)
    assert (rule.pattern if rule else None) == winner


HCL = '''
# a comment
// another
/* and a
   block comment */
path "transit/decrypt/custos-*" {
  capabilities = ["update"]
  allowed_parameters = {
    "ciphertext" = []
  }
}
path "transit/decrypt/custos-secret" { capabilities = ["deny"] }
path "transit/export/encryption-key/custos-*" {
  capabilities = ["read", "list",]
}
path "transit/datakey/plaintext/custos-old" {
  policy = "write"
}
path "transit/decrypt/custos-*" { capabilities = ["create"] }
'''


def test_parse_hcl_and_reach() -> None:
    rules = {r.pattern: r.capabilities for r in parse_policy(HCL)}
    assert rules["transit/decrypt/custos-*"] == {"update", "create"}, "one pattern twice: capabilities merge"
    assert rules["transit/decrypt/custos-secret"] == {"deny"}
    assert "update" in rules["transit/datakey/plaintext/custos-old"]
    parsed = parse_policy(HCL)
    m = reaches_key("p", parsed, mount="transit", key="custos-m")
    assert m is not None and m.operations == {"decrypt": "transit/decrypt/custos-*",
                                              "export": "transit/export/encryption-key/custos-*"}
    # the more specific deny applies to custos-secret: only export is left
    s = reaches_key("p", parsed, mount="transit", key="custos-secret")
    assert s is not None and set(s.operations) == {"export"}
    old = reaches_key("p", parsed, mount="transit", key="custos-old")
    assert old is not None and set(old.operations) == {"decrypt", "datakey", "export"}
    assert reaches_key("p", parsed, mount="transit-other", key="custos-m") is None


def test_parse_json_policy() -> None:
    text = '{"path": {"transit/decrypt/+": {"capabilities": ["update"]}, "sys/*": {"capabilities": ["read"]}}}'
    r = reaches_key("j", parse_policy(text), mount="transit", key="custos-m")
    assert r is not None and r.operations == {"decrypt": "transit/decrypt/+"}


@pytest.mark.parametrize("name", ["custos-controlplane", "custos-breakglass", "custos-auditor"])
def test_shipped_policies(name: str) -> None:
    rules = parse_policy((ROOT / "vault-policies" / f"{name}.hcl").read_text())
    r = reaches_key(name, rules, mount="transit", key="custos-m")
    if name == "custos-controlplane":
        assert r is not None and set(r.operations) == {"decrypt", "datakey"}
    else:
        assert r is None, f"{name} must not reach key material"


@pytest.mark.parametrize("text", [
    'path "x" { capabilities = ["read"] ',  # unclosed
    'path "x" { capabilities = ["read"] } @',
    '{"path": [1]}',
    '{not json',
])
def test_bad_policy_text(text: str) -> None:
    with pytest.raises(InvalidInput, match="policy"):
        parse_policy(text)
