"""custos.v1.Incidents over gRPC: incident views as messages, calls onto ``IncidentService``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from custos.controlplane.audit import current_caller
from custos.controlplane.incidents.service import IncidentService
from custos.core.incidents import report_markdown
from custos.errors import InvalidInput
from custos.v1 import incidents_pb2 as pb
from custos.v1 import incidents_pb2_grpc


def incident_pb(v: Mapping[str, Any]) -> pb.Incident:
    """An incident view (custos.core.incidents ``incident_view``) as its message."""
    return pb.Incident(
        id=v["id"], model=v["model"]["name"], covered=v["model"]["covered"],
        limited_duty_exemption=v["model"]["exemption"], category=v["category"], category_title=v["category_title"],
        severity=v["severity"], status=v["status"], discovered_at_unix_ns=v["discovered_at_ns"],
        report_deadline_unix_ns=v["report_deadline_ns"], opened_at_unix_ns=v["opened_at_ns"],
        seconds_left=v.get("seconds_left", 0), under_24h=v.get("under_24h", False), overdue=v.get("overdue", False),
        hosts=v["hosts"], artifact_ids=v["artifacts"],
        alerts=[pb.IncidentAlert(id=a["id"], rule=a["rule"], category=a["category"], severity=a["severity"],
                                 model=a["model"], artifact_id=a["artifact_id"], host=a["host"],
                                 principal=a["principal"], detail=a["detail"], at_unix_ns=a["at_ns"],
                                 evidence_seqs=a["evidence"]) for a in v["alerts"]],
        copies=[pb.IncidentCopy(id=c["id"], artifact_id=c["artifact_id"], host=c["host"], location=c["location"],
                                location_kind=c["kind"], form=c["form"], state=c["state"], authorized=c["authorized"])
                for c in v["copies"]],
        actions=[pb.IncidentAction(order_id=o["id"], action=o["action"], state=o["state"], models=o["models"],
                                   drill=o["drill"]) for o in v["actions"]],
        history=[pb.IncidentStatusChange(status=h["status"], from_status=h["from"], category=h["category"],
                                         note=h["note"], by=h["by"], at_unix_ns=h["at_ns"]) for h in v["history"]],
        alerts_dropped=v["alerts_dropped"])


class IncidentsServicer(incidents_pb2_grpc.IncidentsServicer):
    """custos.v1.Incidents; errors are CustosErrors, mapped by the one interceptor."""

    def __init__(self, service: IncidentService) -> None:
        self.s = service

    async def ListIncidents(self, req: Any, ctx: Any) -> Any:
        views = await self.s.list_incidents(statuses=list(req.status), model=req.model, include_closed=req.all)
        return pb.ListIncidentsResponse(incidents=[incident_pb(v) for v in views], now_unix_ns=self.s.clock())

    async def GetIncident(self, req: Any, ctx: Any) -> Any:
        return pb.GetIncidentResponse(incident=incident_pb(await self.s.get(req.id)), now_unix_ns=self.s.clock())

    async def UpdateIncident(self, req: Any, ctx: Any) -> Any:
        v = await self.s.update(current_caller.get(), ref=req.id, status=req.status, note=req.note,
                                category=req.category)
        return pb.UpdateIncidentResponse(incident=incident_pb(v))

    async def ExportIncident(self, req: Any, ctx: Any) -> Any:
        if req.format not in ("", "json", "markdown"):
            raise InvalidInput("format must be json or markdown")
        report = await self.s.export(req.id)
        content = report_markdown(report) if req.format == "markdown" else json.dumps(report, indent=2,
                                                                                      sort_keys=True)
        return pb.ExportIncidentResponse(content=content, incident_id=report["incident"])
