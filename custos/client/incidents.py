"""Incidents on the 72-hour reporting clock, client side."""

from __future__ import annotations

from collections.abc import Sequence

from custos.client.session import Client
from custos.v1 import incidents_pb2


def list_incidents(client: Client, *, status: Sequence[str] = (), model: str = "",
                   include_closed: bool = False) -> list[incidents_pb2.Incident]:
    """Incidents, most urgent first: those in ``status`` (default all but closed, or all)."""
    req = incidents_pb2.ListIncidentsRequest(status=list(status), model=model, all=include_closed)
    return list(client.call(client.incidents.ListIncidents, req, incidents_pb2.ListIncidentsResponse).incidents)


def get_incident(client: Client, ref: str) -> incidents_pb2.Incident:
    return client.call(client.incidents.GetIncident, incidents_pb2.GetIncidentRequest(id=ref),
                       incidents_pb2.GetIncidentResponse).incident


def update_incident(client: Client, ref: str, *, status: str = "", note: str = "",
                    category: str = "") -> incidents_pb2.Incident:
    """Move an incident along open -> triaged -> reported -> closed, recategorize it, or note why."""
    req = incidents_pb2.UpdateIncidentRequest(id=ref, status=status, note=note, category=category)
    return client.call(client.incidents.UpdateIncident, req, incidents_pb2.UpdateIncidentResponse).incident


def export_incident(client: Client, ref: str, fmt: str) -> str:
    """The server's incident report, ``fmt`` "markdown" or "json"."""
    return client.call(client.incidents.ExportIncident, incidents_pb2.ExportIncidentRequest(id=ref, format=fmt),
                       incidents_pb2.ExportIncidentResponse).content
