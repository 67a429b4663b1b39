"""What the Store says about the fleet an order reaches: enrolled hosts, their custody
leases, and the copies of the scoped artifacts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from custos.controlplane.store.base import Store
from custos.core.canonical import decode_canonical

NO_LEASE = {"expires_ns": 0, "state": "none"}  # a host that never held a lease


async def enrolled_hosts(store: Store) -> set[str]:
    """The names of the hosts whose enrollment stands."""
    return {h["name"] for h in map(decode_canonical, (e.value for e in await store.range("hosts/")))
            if h["state"] == "enrolled"}


async def enrolled_among(store: Store, hosts: Iterable[str]) -> set[str]:
    """Those of ``hosts`` whose enrollment stands: one read of just their records, however
    large the fleet."""
    found = await store.get_many([f"hosts/{h}" for h in hosts])
    return {k[len("hosts/"):] for k, e in found.items() if decode_canonical(e.value)["state"] == "enrolled"}


async def leases_of(store: Store, hosts: Iterable[str]) -> dict[str, Any]:
    """The lease records of ``hosts`` (a host without one is missing: use NO_LEASE)."""
    found = await store.get_many([f"leases/{h}" for h in hosts])
    return {k[len("leases/"):]: decode_canonical(e.value) for k, e in found.items()}


async def host_leases(store: Store) -> dict[str, Any]:
    """Every host's lease record, by host name (a host without one: use NO_LEASE)."""
    return {e.key[len("leases/"):]: decode_canonical(e.value) for e in await store.range("leases/")}


async def copy_states(store: Store, artifacts: Iterable[str]) -> list[dict[str, Any]]:
    """Every known copy of ``artifacts``, artifact by artifact."""
    out = []
    for aid in artifacts:
        out += [dict(decode_canonical(e.value)) for e in await store.range(f"copies/{aid}/")]
    return out


async def hosts_with_copies(store: Store, artifacts: Iterable[str]) -> set[str]:
    """The hosts holding a copy of ``artifacts`` outside the object store."""
    return {c["host"] for c in await copy_states(store, artifacts) if c["location_kind"] != "object-store"}
