from __future__ import annotations

import pytest

from custos.core.lineage import CycleError, Relation, check_new_edges, reachable, render_tree
from custos.errors import InvalidInput


def test_relations_parse() -> None:
    assert [r.value for r in Relation] == [
        "copy", "fine-tune", "quantize", "distill", "merge", "adapter", "combination"]
    with pytest.raises(InvalidInput):
        Relation.parse("finetune")


@pytest.mark.parametrize(
    ("child", "parents", "descendants", "cycle"),
    [
        ("b", ["a"], [], False),
        ("a", ["a"], [], True),            # self loop
        ("a", ["c"], ["b", "c"], True),    # c descends from a
        ("a", ["x", "c"], ["c"], True),    # one bad parent among several
        ("a", ["x", "y"], ["c"], False),   # merge of unrelated parents
    ],
)
def test_cycle_rules(child: str, parents: list[str], descendants: list[str], cycle: bool) -> None:
    if cycle:
        with pytest.raises(CycleError):
            check_new_edges(child, parents, descendants)
    else:
        check_new_edges(child, parents, descendants)


def test_reachable_and_tree() -> None:
    g = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert reachable(["a"], lambda n: g[n]) == ["b", "c", "d"]
    kids = {"a": [("fine-tune", "b"), ("quantize", "c")], "b": [("merge", "d")],
            "c": [("merge", "d")], "d": []}
    text = render_tree(["a"], lambda n: kids[n], lambda n: n.upper())
    assert text.splitlines()[0] == "A"
    assert "[fine-tune] B" in text and "[quantize] C" in text
    assert text.count("[merge] D") == 2 and "(see above)" in text
