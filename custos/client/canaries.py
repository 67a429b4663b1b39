"""Canaries (decoy weight files on hosts), client side: plant, list, remove."""

from __future__ import annotations

import time

from custos.client.session import Client
from custos.errors import BackendUnavailable, FailedPrecondition
from custos.v1 import canaries_pb2, canaries_pb2_grpc


def _stub(client: Client) -> canaries_pb2_grpc.CanariesStub:
    return canaries_pb2_grpc.CanariesStub(client.channel)


def plant_canary(client: Client, *, host: str, path: str, model: str = "") -> canaries_pb2.PlantCanaryResponse:
    """Ask ``host``'s agent to write decoys under ``path`` (pending until it answers)."""
    req = canaries_pb2.PlantCanaryRequest(host=host, path=path, model=model)
    return client.call(_stub(client).Plant, req, canaries_pb2.PlantCanaryResponse)


def list_canaries(client: Client, *, host: str = "") -> list[canaries_pb2.Canary]:
    """Every canary (of one host), oldest first, removed ones included."""
    return list(client.call(_stub(client).List, canaries_pb2.ListCanariesRequest(host=host),
                            canaries_pb2.ListCanariesResponse).canaries)


def remove_canary(client: Client, ref: str) -> canaries_pb2.Canary:
    """Mark a canary removed (by id or unique prefix); its files stay on the host to be deleted there."""
    return client.call(_stub(client).Remove, canaries_pb2.RemoveCanaryRequest(id=ref),
                       canaries_pb2.RemoveCanaryResponse).canary


def wait_planted(client: Client, canary: canaries_pb2.Canary, *, timeout: float,
                 interval: float = 0.5) -> canaries_pb2.Canary:
    """Poll until the agent answered. Raises FailedPrecondition (it failed, with the agent's
    reason), BackendUnavailable (still pending after ``timeout`` s: the host is not connected?)."""
    deadline = time.monotonic() + timeout
    while True:
        now = next((c for c in list_canaries(client, host=canary.host) if c.id == canary.id), canary)
        if now.state == "failed":
            raise FailedPrecondition(f"canary {now.id} was not planted on {now.host}: {now.error}")
        if now.state != "pending":
            return now
        if time.monotonic() >= deadline:
            raise BackendUnavailable(f"canary {now.id} still pending after {timeout:g} s: is host {now.host} "
                                     "connected? (it is delivered when it connects)")
        time.sleep(interval)
