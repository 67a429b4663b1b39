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


def revoke_certificate(client: Client, *, host: str = "", fingerprint: str = "", certificate_pem: bytes = b"",
                       reason: str = "") -> custody_pb2.RevokeCertificateResponse:
    """Revoke a host's certificates (by host name) or one certificate (by SHA-256 fingerprint or
    PEM): every replica refuses it within seconds and closes its streams. Final."""
    req = custody_pb2.RevokeCertificateRequest(reason=reason)
    if host:
        req.host = host
    elif fingerprint:
        req.fingerprint = fingerprint
    elif certificate_pem:
        req.certificate_pem = certificate_pem
    return client.call(client.custody.RevokeCertificate, req, custody_pb2.RevokeCertificateResponse)


def list_revocations(client: Client) -> list[custody_pb2.Revocation]:
    """Every revoked certificate, oldest first."""
    return list(client.call(client.custody.ListRevocations, custody_pb2.ListRevocationsRequest(),
                            custody_pb2.ListRevocationsResponse).revocations)
