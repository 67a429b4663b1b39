"""Enrolled hosts and custody alerts, client side."""

from __future__ import annotations

from collections.abc import Mapping

from custos.client.session import Client
from custos.v1 import custody_pb2


def add_host(client: Client, name: str, *, labels: Mapping[str, str] | None = None,
             token_ttl_seconds: int = 3600) -> custody_pb2.AddHostResponse:
    """Add a host; the response carries its one-time enrollment token."""
    req = custody_pb2.AddHostRequest(name=name, labels=dict(labels or {}), token_ttl_seconds=token_ttl_seconds)
    return client.call(client.custody.AddHost, req, custody_pb2.AddHostResponse)


def remove_host(client: Client, name: str) -> custody_pb2.Host:
    """Remove a host: its certificate is refused from now on and its lease revoked."""
    return client.call(client.custody.RemoveHost, custody_pb2.RemoveHostRequest(name=name),
                       custody_pb2.RemoveHostResponse).host


def list_hosts(client: Client) -> list[custody_pb2.Host]:
    """Every host, with its lease and its last report."""
    return list(client.call(client.custody.ListHosts, custody_pb2.ListHostsRequest(),
                            custody_pb2.ListHostsResponse).hosts)


def list_alerts(client: Client, *, host: str = "", model: str = "") -> list[custody_pb2.Alert]:
    """Alerts, of one host and/or one model when given."""
    return list(client.call(client.alerts.ListAlerts, custody_pb2.ListAlertsRequest(host=host, model=model),
                            custody_pb2.ListAlertsResponse).alerts)
