"""Vault / OpenBao ACL policies, pure: parse their ``path`` rules and say which rule a
request path falls under, as the server decides it (docs: "Policies", priority matching).

Used to answer "which policies let a token obtain a model's data keys" (``custos access
who``): :func:`parse_policy` reads the HCL (or JSON) text of a policy into
:class:`PathRule`s; :func:`effective_rule` picks the rule the server would apply to a
concrete path; :func:`reaches_key` names the Transit operations on one key that yield key
material (decrypt, datakey, export) which a policy allows.

Only what decides access is read: ``path`` blocks and their ``capabilities`` (and the
deprecated ``policy = "write"`` shorthand). Parameter constraints (``allowed_parameters``
and the like) narrow a request but never make decrypt impossible, so a rule with them
still counts: the answer errs towards naming a holder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from custos.errors import InvalidInput

__all__ = ["GRANTING", "PathRule", "PolicyReach", "effective_rule", "parse_policy", "path_matches",
           "reaches_key", "transit_targets"]

GRANTING = frozenset({"create", "update", "sudo", "root"})
"""Capabilities that let a POST to a Transit operation through (decrypt and datakey are updates)."""

_READING = frozenset({"read", "sudo", "root"})  # export is a GET
_OLD_POLICY = {"deny": ("deny",), "read": ("read", "list"), "write": ("create", "read", "update", "delete", "list"),
               "sudo": ("create", "read", "update", "delete", "list", "sudo")}
MAX_POLICY_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class PathRule:
    """One ``path "PATTERN" { capabilities = [...] }`` rule."""

    pattern: str
    capabilities: frozenset[str]

    @property
    def exact(self) -> bool:
        return "+" not in self.pattern and not self.pattern.endswith("*")

    def priority(self) -> tuple[int, int, int, int, str]:
        """Higher sorts first among matching rules (Vault's priority matching): the first
        wildcard later, no trailing glob, fewer ``+`` segments, longer, lexicographically greater."""
        p = self.pattern
        firsts = [i for i in (p.find("+"), p.find("*")) if i >= 0]
        return (min(firsts) if firsts else len(p) + 1, 0 if p.endswith("*") else 1,
                -p.split("/").count("+"), len(p), p)


# -- parsing ------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<heredoc><<-?(?P<tag>[A-Za-z_][A-Za-z0-9_]*)\n.*?\n\s*(?P=tag)\b)
  | (?P<word>[A-Za-z0-9_.\-]+)
  | (?P<punct>[{}\[\]=,:])
""", re.VERBOSE | re.DOTALL)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise InvalidInput(f"policy: unexpected character {text[pos]!r} on line {line}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind == "str":
            out.append(("str", json.loads(m.group("str"))))
        elif kind == "heredoc":
            body = m.group("heredoc").split("\n", 1)[1].rsplit("\n", 1)[0]
            out.append(("str", body))
        else:
            out.append((kind or "", m.group(kind or 0)))
    return out


class _Parser:
    """HCL bodies: ``key = value`` and ``key "label"... { body }``; values are strings,
    numbers, words, lists and objects. Enough of HCL for ACL policies."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise InvalidInput(f"policy: expected {value or 'more'}, got {tok[1] if tok else 'the end'!r}")
        self.i += 1
        return tok

    def body(self, closing: str | None) -> list[tuple[str, list[str], Any]]:
        """(key, labels, value or nested body) items until ``closing`` (or the end)."""
        items: list[tuple[str, list[str], Any]] = []
        while True:
            tok = self.peek()
            if tok is None:
                if closing is not None:
                    raise InvalidInput(f"policy: missing {closing!r}")
                return items
            if tok[1] == closing and tok[0] == "punct":
                self.i += 1
                return items
            if tok[1] == ",":
                self.i += 1
                continue
            kind, key = self.take()
            if kind not in ("word", "str"):
                raise InvalidInput(f"policy: unexpected {key!r}")
            labels: list[str] = []
            while (nxt := self.peek()) is not None and nxt[0] == "str":
                labels.append(self.take()[1])
            nxt = self.peek()
            if nxt is not None and nxt[1] in ("=", ":"):
                self.i += 1
                items.append((key, labels, self.value()))
            else:
                self.take("{")
                items.append((key, labels, self.body("}")))

    def value(self) -> Any:
        kind, text = self.take()
        if kind in ("str", "word"):
            return text
        if text == "[":
            out = []
            while (tok := self.peek()) is not None and tok[1] != "]":
                if tok[1] == ",":
                    self.i += 1
                    continue
                out.append(self.value())
            self.take("]")
            return out
        if text == "{":
            return self.body("}")
        raise InvalidInput(f"policy: unexpected {text!r} where a value belongs")


def _caps(where: str, raw: Any) -> frozenset[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise InvalidInput(f"policy: capabilities of {where!r} must be a list of strings")
    return frozenset(c.strip().lower() for c in raw)


def _rule(pattern: str, fields: Mapping[str, Any]) -> PathRule:
    caps: set[str] = set()
    if "capabilities" in fields:
        caps |= _caps(pattern, fields["capabilities"])
    old = fields.get("policy")
    if isinstance(old, str):
        caps |= set(_OLD_POLICY.get(old.strip().lower(), ()))
    return PathRule(pattern.lstrip("/"), frozenset(caps))


def _fields(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    if isinstance(body, list):
        return {k: v for k, _, v in body if isinstance(k, str)}
    return {}


def parse_policy(text: str) -> list[PathRule]:
    """The path rules of an ACL policy (HCL or JSON). The same pattern twice: capabilities
    merge, as the server merges them. Raises InvalidInput (unparsable, not a policy)."""
    if not isinstance(text, str) or len(text) > MAX_POLICY_CHARS:
        raise InvalidInput("policy: not a policy text (or too long)")
    rules: list[PathRule] = []
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise InvalidInput(f"policy: bad JSON: {exc}") from None
        paths = doc.get("path", {}) if isinstance(doc, dict) else None
        if not isinstance(paths, dict):
            raise InvalidInput("policy: JSON without a \"path\" object")
        for pattern, fields in paths.items():
            rules.append(_rule(str(pattern), _fields(fields)))
    else:
        for key, labels, value in _Parser(_tokens(text)).body(None):
            if key != "path":
                continue
            if labels:
                rules.append(_rule(labels[0], _fields(value)))
            else:  # path = { "pattern" = { ... } }
                for pattern, _, fields in value if isinstance(value, list) else []:
                    rules.append(_rule(str(pattern), _fields(fields)))
    merged: dict[str, set[str]] = {}
    for r in rules:
        merged.setdefault(r.pattern, set()).update(r.capabilities)
    return [PathRule(p, frozenset(c)) for p, c in merged.items()]


# -- matching ------------------------------------------------------------------------------


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` (``+`` one whole segment, a trailing ``*`` any suffix) covers ``path``."""
    glob = pattern.endswith("*")
    pat = pattern[:-1] if glob else pattern
    if "+" not in pat:
        return path.startswith(pat) if glob else path == pat
    psegs, segs = pat.split("/"), path.split("/")
    if len(segs) < len(psegs) or (not glob and len(segs) != len(psegs)):
        return False
    for i, ps in enumerate(psegs):
        if glob and i == len(psegs) - 1:
            return ps == "+" or "/".join(segs[i:]).startswith(ps)
        if ps != "+" and ps != segs[i]:
            return False
    return True


def effective_rule(rules: Iterable[PathRule], path: str) -> PathRule | None:
    """The rule the server applies to ``path``: an exact match, else the highest-priority match."""
    matching = [r for r in rules if path_matches(r.pattern, path)]
    if not matching:
        return None
    exact = [r for r in matching if r.exact]
    return exact[0] if exact else max(matching, key=PathRule.priority)


def transit_targets(mount: str, key: str) -> dict[str, tuple[tuple[str, frozenset[str]], ...]]:
    """operation -> (request path, capabilities any of which lets it through): the Transit
    requests that hand out key material of ``key``."""
    m = mount.strip("/")
    return {
        "decrypt": ((f"{m}/decrypt/{key}", GRANTING),),
        # datakey/wrapped hands out no plaintext; datakey/plaintext does.
        "datakey": ((f"{m}/datakey/plaintext/{key}", GRANTING),),
        "export": ((f"{m}/export/encryption-key/{key}", _READING),
                   (f"{m}/export/encryption-key/{key}/latest", _READING)),
    }


@dataclass(frozen=True, slots=True)
class PolicyReach:
    """What one policy allows on one key: operation -> the pattern of the rule that allows it."""

    policy: str
    operations: Mapping[str, str]

    def describe(self) -> str:
        by_pattern: dict[str, list[str]] = {}
        for op, pattern in self.operations.items():
            by_pattern.setdefault(pattern, []).append(op)
        return f"{self.policy}: " + "; ".join(f'path "{p}" ({", ".join(ops)})' for p, ops in by_pattern.items())


def reaches_key(policy: str, rules: Sequence[PathRule], *, mount: str, key: str) -> PolicyReach | None:
    """The operations on ``key`` that yield key material and that ``rules`` allow (a ``deny``
    in the applying rule refuses), or None if none is allowed."""
    ops: dict[str, str] = {}
    for op, targets in transit_targets(mount, key).items():
        for path, needs in targets:
            rule = effective_rule(rules, path)
            if rule is not None and "deny" not in rule.capabilities and rule.capabilities & needs:
                ops[op] = rule.pattern
                break
    return PolicyReach(policy, ops) if ops else None
