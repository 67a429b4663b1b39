"""Domain values <-> their protobuf enums: one table each, shared by the control plane and its clients."""

from __future__ import annotations

from typing import cast

from custos.core.lineage import Relation
from custos.errors import InvalidInput
from custos.v1 import registry_pb2

RELATIONS: tuple[str, ...] = tuple(r.value for r in Relation)
RELATION_TO_PB: dict[str, registry_pb2.Relation] = {
    r.value: cast("registry_pb2.Relation", registry_pb2.Relation.Value(f"RELATION_{r.name}")) for r in Relation
}
RELATION_FROM_PB: dict[int, str] = {v: k for k, v in RELATION_TO_PB.items()}


def relation_from_pb(value: int) -> str:
    """The relation's name. Raises InvalidInput for an unset or unknown value."""
    if value not in RELATION_FROM_PB:
        raise InvalidInput(f"relation is required ({', '.join(RELATIONS)})")
    return RELATION_FROM_PB[value]
