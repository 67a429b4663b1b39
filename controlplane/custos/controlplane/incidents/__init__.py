"""Incidents: alerts correlated into AI safety incidents on the 72-hour reporting clock
(``service``), served over gRPC (``servicer``) and wired into the control plane with
the rules, notifications and metrics (``runtime``)."""

from custos.controlplane.incidents.runtime import LEADER_KEY, IncidentsRuntime, attach
from custos.controlplane.incidents.service import IncidentService
from custos.controlplane.incidents.servicer import IncidentsServicer

__all__ = ["LEADER_KEY", "IncidentService", "IncidentsRuntime", "IncidentsServicer", "attach"]
