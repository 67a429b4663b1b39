"""Lineage rules: derivation relations and the acyclic artifact graph.

A derivative of a model is anything reachable from one of its artifacts along
derivation edges (parent -> child). The graph must stay acyclic, or "every
derivative" would be ill-defined and a shutdown's scope could chase its tail.
Pure logic: callers hand in the edges they loaded.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from custos.errors import Conflict, InvalidInput


class Relation(enum.StrEnum):
    COPY = "copy"
    FINE_TUNE = "fine-tune"
    QUANTIZE = "quantize"
    DISTILL = "distill"
    MERGE = "merge"
    ADAPTER = "adapter"
    COMBINATION = "combination"

    @classmethod
    def parse(cls, value: str) -> Relation:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(r.value for r in cls)
            raise InvalidInput(f"unknown relation {value!r}; want one of {allowed}") from None


class CycleError(Conflict):
    """Recording this derivation would make the lineage graph cyclic."""


@dataclass(frozen=True, slots=True)
class Edge:
    parent: str
    child: str
    relation: Relation


def reachable(start: Iterable[str], step: Callable[[str], Iterable[str]]) -> list[str]:
    """Breadth-first closure of ``start`` under ``step``, excluding the start nodes
    unless they are reached again. Order is deterministic given ``step``."""
    seen: set[str] = set()
    order: list[str] = []
    queue = deque(start)
    starts = set(queue)
    while queue:
        node = queue.popleft()
        for nxt in step(node):
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                queue.append(nxt)
    return [n for n in order if n not in starts] + [n for n in order if n in starts]


def check_new_edges(child: str, parents: Iterable[str], descendants_of_child: Iterable[str]) -> None:
    """Raise CycleError if any parent is the child or one of its descendants."""
    desc = set(descendants_of_child)
    for parent in parents:
        if parent == child:
            raise CycleError(f"artifact {child[:12]} cannot derive from itself")
        if parent in desc:
            raise CycleError(
                f"derivation {parent[:12]} -> {child[:12]} would create a cycle"
            )


def check_parents(parents: Mapping[str, Relation]) -> None:
    """Several parents are allowed (merge, combination); one relation per parent."""
    if len(parents) > 64:
        raise InvalidInput("too many parents (max 64)")


def render_tree(
    roots: Iterable[str],
    children: Callable[[str], list[tuple[str, str]]],
    label: Callable[[str], str],
) -> str:
    """Render a forest as an indented tree for people.

    ``children(node)`` returns (relation, child) pairs. A node reached twice (a
    merge) is printed again with a marker instead of its subtree again.
    """
    lines: list[str] = []
    printed: set[str] = set()

    def walk(node: str, prefix: str, relation: str | None, last: bool, top: bool) -> None:
        connector = "" if top else ("└── " if last else "├── ")
        rel = f"[{relation}] " if relation else ""
        again = node in printed
        lines.append(f"{prefix}{connector}{rel}{label(node)}{' (see above)' if again else ''}")
        if again:
            return
        printed.add(node)
        kids = children(node)
        child_prefix = prefix if top else prefix + ("    " if last else "│   ")
        for i, (r, kid) in enumerate(kids):
            walk(kid, child_prefix, r, i == len(kids) - 1, False)

    for root in roots:
        walk(root, "", None, True, True)
    return "\n".join(lines)
