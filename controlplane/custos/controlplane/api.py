"""The gRPC servicers: each RPC turned into a call on the control plane's parts and its
reply message. Authentication, authorization, attribution and error mapping happen
before any of them, in ``custos.controlplane.guard.GuardInterceptor``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from custos.client.status import RETRY_AFTER_KEY, STREAM_TAKEN_KEY, status_for
from custos.client.wire import RELATION_TO_PB, relation_from_pb
from custos.controlplane.admission import Admission, Busy
from custos.controlplane.audit import AuditLog, Caller, current_caller
from custos.controlplane.custody import Custody
from custos.controlplane.guard import bounded_details, decoded, peer_host
from custos.controlplane.keys.broker import KeyBroker
from custos.controlplane.orders import NoSignerSet, OrdersService
from custos.controlplane.registry import ArtifactRecord, Registry
from custos.core.audit_chain import parse_stored
from custos.core.keymaterial import zeroize
from custos.core.reports import order_report_markdown
from custos.core.signers import SignerSet
from custos.errors import (
    CustosError,
    InvalidInput,
)
from custos.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    custody_pb2,
    custody_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = logging.getLogger("custos.api")


# -- conversions -------------------------------------------------------------

_STATE = {"active": registry_pb2.MODEL_STATE_ACTIVE, "halted": registry_pb2.MODEL_STATE_HALTED,
          "destroyed": registry_pb2.MODEL_STATE_DESTROYED}
_KIND = {"object-store": registry_pb2.LOCATION_KIND_OBJECT_STORE,
         "host-path": registry_pb2.LOCATION_KIND_HOST_PATH,
         "process": registry_pb2.LOCATION_KIND_PROCESS}
_FORM = {"ciphertext": registry_pb2.COPY_FORM_CIPHERTEXT,
         "plaintext": registry_pb2.COPY_FORM_PLAINTEXT, "loaded": registry_pb2.COPY_FORM_LOADED}


def model_pb(m: dict[str, Any], artifact_ids: list[str] | None = None) -> registry_pb2.Model:
    ex = m.get("exemption")
    return registry_pb2.Model(
        name=m["name"], owner=m["owner"], training_flops=float(m["training_flops"]),
        benchmark_equivalence=m["benchmark_equivalence"], covered=m["covered"],
        exemption=registry_pb2.LimitedDutyExemption(**ex) if ex else None,
        state=_STATE[m["state"]], transit_key=m["transit_key"],
        created_at_unix_ns=m["created_at_ns"], created_by=m["created_by"], drill=m["drill"],
        artifact_ids=artifact_ids or [],
        custody_hosts=m.get("custody_hosts", []), custody_paths=m.get("custody_paths", []),
    )


def artifact_pb(a: ArtifactRecord) -> registry_pb2.Artifact:
    st = a.storage or {}
    return registry_pb2.Artifact(
        stored=a.storage is not None,
        blob_store=st.get("blob_store", ""),
        objects=[registry_pb2.StoredObject(path=o["path"], key=o["key"], size=o["size"],
                                           plaintext_size=o["plaintext_size"])
                 for o in st.get("objects", [])],
        id=a.id, model=a.model, manifest=a.manifest_bytes,
        files=[registry_pb2.FileEntry(path=f.path, size=f.size, sha256=f.sha256)
               for f in a.manifest.files],
        total_size=a.manifest.total_size, created_at_unix_ns=a.created_at_ns,
        created_by=a.created_by,
        parents=[registry_pb2.ParentRef(artifact_id=p, relation=RELATION_TO_PB[r])
                 for p, r in sorted(a.parents.items())],
    )


def copy_pb(c: dict[str, Any]) -> registry_pb2.Copy:
    return registry_pb2.Copy(
        id=c["id"], artifact_id=c["artifact_id"], model=c["model"],
        location_kind=_KIND[c["location_kind"]], location=c["location"], host=c["host"],
        form=_FORM[c["form"]], authorized=c["authorized"], state=c["state"],
        first_seen_unix_ns=c["first_seen_ns"], last_seen_unix_ns=c["last_seen_ns"],
        evidence=c.get("evidence", ""), files_matched=c.get("files_matched", 0), files_total=c.get("files_total", 0),
    )


_FORM_FROM_PB = {v: k for k, v in _FORM.items()}


class RegistryStorageMixin:
    """Registry RPCs that need the key broker (stored artifacts) or record copies."""

    r: Registry
    broker: KeyBroker
    custody: Custody

    async def RegisterStoredArtifact(self, req: registry_pb2.RegisterStoredArtifactRequest,
                                     ctx: grpc.aio.ServicerContext) -> registry_pb2.RegisterStoredArtifactResponse:
        rec, created = await self.broker.register_stored(current_caller.get(), artifact_id=req.artifact_id)
        return registry_pb2.RegisterStoredArtifactResponse(artifact=artifact_pb(rec), created=created)

    async def SetCustodyPolicy(self, req: registry_pb2.SetCustodyPolicyRequest,
                               ctx: grpc.aio.ServicerContext) -> registry_pb2.SetCustodyPolicyResponse:
        m = await self.r.set_custody_policy(current_caller.get(), name=req.model, hosts=list(req.hosts),
                                            paths=list(req.paths))
        return registry_pb2.SetCustodyPolicyResponse(model=model_pb(m))

    async def RecordCopy(self, req: registry_pb2.RecordCopyRequest,
                         ctx: grpc.aio.ServicerContext) -> registry_pb2.RecordCopyResponse:
        form = _FORM_FROM_PB.get(req.form)
        if form is None:
            raise InvalidInput("copy form is required (ciphertext, plaintext, loaded)")
        caller = current_caller.get()
        host = req.host
        if caller.role == "agent":
            # An agent speaks only for its own host, and only while enrolled.
            await self.custody.check_agent(caller, need_lease=False)
            host = caller.principal
        copy = await self.r.record_copy(caller, artifact=req.artifact_id, host=host, path=req.path, form=form)
        return registry_pb2.RecordCopyResponse(copy=copy_pb(copy))


# -- servicers ---------------------------------------------------------------


class RegistryServicer(RegistryStorageMixin, registry_pb2_grpc.RegistryServicer):
    def __init__(self, registry: Registry, broker: KeyBroker, custody: Custody) -> None:
        self.r = registry
        self.broker = broker
        self.custody = custody

    async def RegisterModel(self, req: registry_pb2.RegisterModelRequest,
                            ctx: grpc.aio.ServicerContext) -> registry_pb2.RegisterModelResponse:
        ex = None
        if req.HasField("exemption"):
            ex = {"basis": req.exemption.basis, "date": req.exemption.date,
                  "certifier": req.exemption.certifier}
        m = await self.r.register_model(
            current_caller.get(), name=req.name, owner=req.owner,
            training_flops=req.training_flops, benchmark_equivalence=req.benchmark_equivalence,
            exemption=ex, drill=req.drill)
        return registry_pb2.RegisterModelResponse(model=model_pb(m))

    async def GetModel(self, req: registry_pb2.GetModelRequest,
                       ctx: grpc.aio.ServicerContext) -> registry_pb2.GetModelResponse:
        m = await self.r.get_model(req.name)
        return registry_pb2.GetModelResponse(
            model=model_pb(m, await self.r.model_artifact_ids(req.name)))

    async def ListModels(self, req: registry_pb2.ListModelsRequest,
                         ctx: grpc.aio.ServicerContext) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(models=[model_pb(m) for m in await self.r.list_models()])

    async def RegisterArtifact(self, req: registry_pb2.RegisterArtifactRequest,
                               ctx: grpc.aio.ServicerContext) -> registry_pb2.RegisterArtifactResponse:
        parents = [(p.artifact_id, relation_from_pb(p.relation)) for p in req.parents]
        rec, created = await self.r.register_artifact(
            current_caller.get(), model=req.model, manifest_bytes=req.manifest, parents=parents,
            source_host=req.source_host, source_path=req.source_path)
        return registry_pb2.RegisterArtifactResponse(artifact=artifact_pb(rec), created=created)

    async def GetArtifact(self, req: registry_pb2.GetArtifactRequest,
                          ctx: grpc.aio.ServicerContext) -> registry_pb2.GetArtifactResponse:
        return registry_pb2.GetArtifactResponse(artifact=artifact_pb(await self.r.get_artifact(req.id)))

    async def ListArtifacts(self, req: registry_pb2.ListArtifactsRequest,
                            ctx: grpc.aio.ServicerContext) -> registry_pb2.ListArtifactsResponse:
        return registry_pb2.ListArtifactsResponse(
            artifacts=[artifact_pb(a) for a in await self.r.list_artifacts(req.model)])

    async def RecordDerivation(self, req: registry_pb2.RecordDerivationRequest,
                               ctx: grpc.aio.ServicerContext) -> registry_pb2.RecordDerivationResponse:
        await self.r.record_derivation(current_caller.get(), child=req.child, parent=req.parent,
                                       relation=relation_from_pb(req.relation))
        return registry_pb2.RecordDerivationResponse()

    async def GetLineage(self, req: registry_pb2.GetLineageRequest,
                         ctx: grpc.aio.ServicerContext) -> registry_pb2.GetLineageResponse:
        d = req.direction
        lin = await self.r.lineage(
            model=req.model if req.WhichOneof("subject") == "model" else None,
            artifact=req.artifact_id if req.WhichOneof("subject") == "artifact_id" else None,
            ancestors=d in (registry_pb2.LINEAGE_DIRECTION_BOTH, registry_pb2.LINEAGE_DIRECTION_ANCESTORS),
            descendants=d in (registry_pb2.LINEAGE_DIRECTION_BOTH,
                              registry_pb2.LINEAGE_DIRECTION_DESCENDANTS),
        )
        return registry_pb2.GetLineageResponse(
            nodes=[registry_pb2.LineageNode(**n) for n in lin["nodes"]],
            edges=[registry_pb2.LineageEdge(parent=e["parent"], child=e["child"],
                                            relation=RELATION_TO_PB[e["relation"]])
                   for e in lin["edges"]],
            models=lin["models"],
        )

    async def ListCopies(self, req: registry_pb2.ListCopiesRequest,
                         ctx: grpc.aio.ServicerContext) -> registry_pb2.ListCopiesResponse:
        models, artifacts, copies = await self.r.list_copies(
            req.model, include_derivatives=not req.exclude_derivatives)
        return registry_pb2.ListCopiesResponse(
            copies=[copy_pb(c) for c in copies], models=models, artifact_ids=artifacts)


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, broker: KeyBroker) -> None:
        self.b = broker

    async def CreateDataKey(self, req: keys_pb2.CreateDataKeyRequest,
                            ctx: grpc.aio.ServicerContext) -> keys_pb2.CreateDataKeyResponse:
        parents = [(p.artifact_id, relation_from_pb(p.relation)) for p in req.parents]
        out = await self.b.create_data_key(current_caller.get(), model=req.model,
                                           manifest_bytes=req.manifest, parents=parents)
        key = out["data_key"]
        try:
            return keys_pb2.CreateDataKeyResponse(
                artifact_id=out["artifact_id"], data_key=bytes(key) if key is not None else b"",
                object_prefix=f"artifacts/{out['artifact_id']}/", blob_store=self.b.blob_url,
                resumed=out["resumed"], already_stored=out["already_stored"])
        finally:
            if key is not None:
                zeroize(key)

    async def UnwrapDataKey(self, req: keys_pb2.UnwrapDataKeyRequest,
                            ctx: grpc.aio.ServicerContext) -> keys_pb2.UnwrapDataKeyResponse:
        rec, key, grant = await self.b.unwrap(current_caller.get(), artifact=req.artifact_id, purpose=req.purpose)
        try:
            if grant is None:
                return keys_pb2.UnwrapDataKeyResponse(artifact=artifact_pb(rec), data_key=bytes(key))
            return keys_pb2.UnwrapDataKeyResponse(artifact=artifact_pb(rec), data_key=bytes(key), grant_id=grant.id,
                                                  grant_not_after_unix_ns=grant.not_after_ns,
                                                  grant_on_expiry=grant.on_expiry)
        finally:
            zeroize(key)


def host_pb(h: dict[str, Any]) -> custody_pb2.Host:
    return custody_pb2.Host(
        name=h["name"], state=h["state"], labels=h.get("labels", {}),
        lease_expires_unix_ns=h.get("lease_expires_ns", 0), lease_state=h.get("lease_state", "none"),
        last_report_unix_ns=h.get("last_report_ns", 0), enrolled_at_unix_ns=h.get("enrolled_at_ns", 0),
        cert_fingerprint=h.get("cert_fingerprint", ""), files=h.get("files", 0), processes=h.get("processes", 0),
        guard=h.get("guard", ""))


REPORTS_QUEUED = 4  # reports of one stream waiting to be ingested before its reading waits
# Reports ingested at once, all streams together: enough to fill a group commit of their
# writes (REPORTS_PER_WRITE) with the next one forming; the rest wait their turn in order, so
# a fleet's first contact does not crowd the event loop that answers heartbeats and unwraps.
INGESTS_AT_ONCE = 64


class CustodyServicer(custody_pb2_grpc.CustodyServicer):
    def __init__(self, custody: Custody, admission: Admission | None = None) -> None:
        self.c = custody
        self.admission = admission or Admission()
        self._ingests: asyncio.Semaphore | None = None

    async def AddHost(self, req: custody_pb2.AddHostRequest,
                      ctx: grpc.aio.ServicerContext) -> custody_pb2.AddHostResponse:
        h, token, expires = await self.c.add_host(current_caller.get(), name=req.name, labels=dict(req.labels),
                                                  token_ttl=req.token_ttl_seconds)
        return custody_pb2.AddHostResponse(host=host_pb(h), enrollment_token=token, token_expires_unix_ns=expires)

    async def RemoveHost(self, req: custody_pb2.RemoveHostRequest,
                         ctx: grpc.aio.ServicerContext) -> custody_pb2.RemoveHostResponse:
        return custody_pb2.RemoveHostResponse(host=host_pb(await self.c.remove_host(current_caller.get(),
                                                                                     name=req.name)))

    async def ListHosts(self, req: custody_pb2.ListHostsRequest,
                        ctx: grpc.aio.ServicerContext) -> custody_pb2.ListHostsResponse:
        return custody_pb2.ListHostsResponse(hosts=[host_pb(h) for h in await self.c.list_hosts()])

    async def RenewCertificate(self, req: custody_pb2.RenewCertificateRequest,
                               ctx: grpc.aio.ServicerContext) -> custody_pb2.RenewCertificateResponse:
        cert, until = await self.c.certs.renew(current_caller.get(), req.csr_pem)  # the guard checked the caller
        return custody_pb2.RenewCertificateResponse(certificate_pem=cert, ca_pem=self.c.certs.ca_pem,
                                                    not_after_unix_ns=until)

    async def RevokeCertificate(self, req: custody_pb2.RevokeCertificateRequest,
                                ctx: grpc.aio.ServicerContext) -> custody_pb2.RevokeCertificateResponse:
        revoked, host = await self.c.revoke_certificate(
            current_caller.get(), host=req.host, fingerprint=req.fingerprint, certificate_pem=req.certificate_pem,
            reason=req.reason)
        return custody_pb2.RevokeCertificateResponse(revoked=[self.revocation_pb(e) for e in revoked],
                                                     host=host_pb(host) if host is not None else None)

    async def ListRevocations(self, req: custody_pb2.ListRevocationsRequest,
                              ctx: grpc.aio.ServicerContext) -> custody_pb2.ListRevocationsResponse:
        return custody_pb2.ListRevocationsResponse(
            revocations=[self.revocation_pb(e) for e in await self.c.revocations.entries()])

    @staticmethod
    def revocation_pb(e: dict[str, Any]) -> custody_pb2.Revocation:
        return custody_pb2.Revocation(
            fingerprint=e["fingerprint"], principal=e["principal"], role=e["role"], reason=e["reason"],
            revoked_at_unix_ns=e["revoked_at_ns"], revoked_by=e["revoked_by"], not_after_unix_ns=e["not_after_ns"])

    async def Stream(self, request_iterator: AsyncIterator[custody_pb2.AgentMessage],
                     ctx: grpc.aio.ServicerContext) -> None:
        """The custody stream, on gRPC's reader/writer API: a message down the stream is one
        ``write`` of it (of its bytes, for an order serialized once for every stream), with no
        generator layers per message — at a halt this runs once per host.

        The stream is taken (initial metadata sent) before its opening waits for admission
        (``custos.controlplane.admission``): the agent then knows to wait for its lease."""
        caller = current_caller.get()
        await ctx.send_initial_metadata(((STREAM_TAKEN_KEY, "1"),))
        q: asyncio.Queue[Any] | None = None
        reader: asyncio.Task[None] | None = None
        host = caller.principal
        try:
            try:
                async with self.admission.opening():
                    await self.c.check_agent(caller, need_lease=False)  # again: it may have waited
                    q = self.c.attach(host)
                    expires = await self.c.renew_lease(host)
                    if expires is not None:
                        await ctx.write(custody_pb2.ControlMessage(lease=custody_pb2.Lease(
                            expires_unix_ns=expires, ttl_seconds=int(self.c.lease_ttl))))
                        if self.c.on_leased is not None:
                            self.c.on_leased(host, q)  # after the lease went out: canaries may follow it
            except Busy as exc:
                await ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, bounded_details(exc),
                                trailing_metadata=((RETRY_AFTER_KEY, str(int(exc.retry_after_s * 1000))),))
            assert q is not None  # set in the block, which raised otherwise
            reader = asyncio.create_task(self._read(ctx, host, caller, q))
            while True:
                item = await q.get()
                if item is None:
                    return
                if isinstance(item, tuple) and item[0] == "notice":
                    await ctx.write(custody_pb2.ControlMessage(notice=item[1]))
                elif isinstance(item, bytes):  # an order, serialized once for every stream
                    try:
                        await ctx.write(item)
                    finally:
                        self.c.order_written()
                else:
                    await ctx.write(item)
        finally:
            if reader is not None:
                reader.cancel()
            if q is not None:
                self.c.detach(host, q)

    async def _read(self, ctx: grpc.aio.ServicerContext, host: str, caller: Caller, q: asyncio.Queue[Any]) -> None:
        # Reports are ingested on a task of their own, in order, so a heartbeat behind a slow
        # report is answered at once: at first contact of a fleet a report may take longer than
        # the lease TTL, and the heartbeat waiting behind it made the agent fail closed. At most
        # REPORTS_QUEUED wait; past that the stream's reading waits (a flood of reports from one
        # agent holds up that agent alone).
        reports: asyncio.Queue[tuple[Any, int] | None] = asyncio.Queue(maxsize=REPORTS_QUEUED)
        ingester = asyncio.create_task(self._ingest_reports(host, reports, q))
        try:
            while (msg := await ctx.read()) is not grpc.aio.EOF:
                received = time.time_ns()
                msg = decoded(msg)
                kind = msg.WhichOneof("msg")
                if ingester.done():
                    return  # a report failed: the stream is ending with its notice
                if kind == "heartbeat":
                    await self.c.check_agent(caller, need_lease=False)
                    expires = await self.c.renew_lease(host)
                    if expires is not None:  # revoked until the host acks the order
                        q.put_nowait(custody_pb2.ControlMessage(lease=custody_pb2.Lease(
                            expires_unix_ns=expires, ttl_seconds=int(self.c.lease_ttl))))
                elif kind == "inventory":
                    await reports.put((msg.inventory, received))
                elif kind == "ack" and self.c.on_ack is not None:
                    await self.c.on_ack(host, msg.ack, received)
                elif kind == "access":
                    await self.c.on_access(host, msg.access)
                elif kind == "canary" and self.c.on_canary is not None:
                    await self.c.on_canary(host, msg.canary, caller)
            await reports.put(None)  # the agent is done writing: its last reports still count
            await ingester
        except CustosError as exc:
            log.warning("custody stream of %s: %s", host, exc)
            q.put_nowait(("notice", str(exc)))
        except grpc.aio.AbortError:
            pass
        except Exception:
            log.exception("custody stream of %s failed", host)
        finally:
            if not ingester.done():
                ingester.cancel()
            q.put_nowait(None)

    async def _ingest_reports(self, host: str, reports: asyncio.Queue[tuple[Any, int] | None],
                              q: asyncio.Queue[Any]) -> None:
        """The stream's reports, one at a time in the order sent; a receipt for each. A report
        that fails ends the stream with its notice, as it did when reports were read inline."""
        try:
            if self._ingests is None:
                self._ingests = asyncio.Semaphore(INGESTS_AT_ONCE)
            while (item := await reports.get()) is not None:
                inv, received = item
                async with self._ingests:
                    got = await self.c.ingest(host, inv)
                q.put_nowait(custody_pb2.ControlMessage(report=custody_pb2.ReportReceipt(
                    received_unix_ns=received, ingested_unix_ns=time.time_ns(),
                    copies=int(got["copies"]), alerts=int(got["alerts"]))))
        except CustosError as exc:
            log.warning("custody stream of %s: %s", host, exc)
            q.put_nowait(("notice", str(exc)))
            q.put_nowait(None)
        except Exception:
            log.exception("custody stream of %s: ingesting a report failed", host)
            q.put_nowait(None)


class EnrollmentServicer(custody_pb2_grpc.EnrollmentServicer):
    """Served alone on the enrollment listener (no client certificate yet)."""

    def __init__(self, custody: Custody) -> None:
        self.c = custody

    async def Enroll(self, req: custody_pb2.EnrollRequest,
                     ctx: grpc.aio.ServicerContext) -> custody_pb2.EnrollResponse:
        try:
            cert, ca = await self.c.enroll(peer=peer_host(ctx.peer() or ""), name=req.name, token=req.token,
                                           csr_pem=req.csr_pem)
        except CustosError as exc:
            await ctx.abort(status_for(exc), bounded_details(exc))
        return custody_pb2.EnrollResponse(certificate_pem=cert, ca_pem=ca, signer_set=self.c.signer_set(),
                                          lease_ttl_seconds=int(self.c.lease_ttl))


class AlertsServicer(custody_pb2_grpc.AlertsServicer):
    def __init__(self, custody: Custody) -> None:
        self.c = custody

    async def ListAlerts(self, req: custody_pb2.ListAlertsRequest,
                         ctx: grpc.aio.ServicerContext) -> custody_pb2.ListAlertsResponse:
        alerts = await self.c.list_alerts(host=req.host, model=req.model)
        return custody_pb2.ListAlertsResponse(alerts=[custody_pb2.Alert(
            id=a["id"], rule=a["rule"], severity=a["severity"], model=a["model"], artifact_id=a["artifact_id"],
            host=a["host"], detail=a["detail"], at_unix_ns=a["at_ns"], state=a["state"]) for a in alerts])


def order_pb(d: dict[str, Any]) -> orders_pb2.OrderInfo:
    o = d["order"]
    return orders_pb2.OrderInfo(
        id=o.id, body=d["body"].encode(), action=o.action, models=list(o.models), artifacts=list(o.artifacts),
        reason=o.reason, issued_at=o.issued_at, not_after=o.not_after, sequence=o.sequence,
        signer_set_version=o.signer_set_version, drill=o.drill, state=d["state"], signed_by=d["signed_by"],
        threshold=d["threshold"], missing=d["missing"], proposed_by=d["proposed_by"],
        quorum_at_unix_ns=d["quorum_at_ns"], completed_at_unix_ns=d["completed_at_ns"],
        problems=d.get("problems", []))


class OrdersServicer(orders_pb2_grpc.OrdersServicer):
    def __init__(self, orders: OrdersService) -> None:
        self.o = orders

    async def _set_info(self) -> orders_pb2.SignerSetInfo:
        chain = await self.o.chain()
        if not chain:

            raise NoSignerSet("no signer set installed")

        current = SignerSet.decode(chain[-1][0])
        return orders_pb2.SignerSetInfo(
            signer_set=chain[-1][0], version=current.version,
            chain=[orders_pb2.SignedRotation(signer_set=s, signatures=g) for s, g in chain])

    async def GetSignerSet(self, req: orders_pb2.GetSignerSetRequest,
                           ctx: grpc.aio.ServicerContext) -> orders_pb2.SignerSetInfo:
        return await self._set_info()

    async def RotateSignerSet(self, req: orders_pb2.RotateSignerSetRequest,
                              ctx: grpc.aio.ServicerContext) -> orders_pb2.SignerSetInfo:
        await self.o.rotate(current_caller.get(), new_set=req.signer_set, signatures=req.signatures)
        await self.o.refresh_chain()
        return await self._set_info()

    async def Propose(self, req: orders_pb2.ProposeRequest,
                      ctx: grpc.aio.ServicerContext) -> orders_pb2.ProposeResponse:
        d = await self.o.propose(current_caller.get(), action=req.action, models=list(req.models),
                                 reason=req.reason, expires_seconds=req.expires_seconds, drill=req.drill)
        return orders_pb2.ProposeResponse(order=order_pb(d))

    async def AttachSignature(self, req: orders_pb2.AttachSignatureRequest,
                              ctx: grpc.aio.ServicerContext) -> orders_pb2.AttachSignatureResponse:
        d = await self.o.attach(current_caller.get(), order_id=req.order_id, signatures=req.signatures)
        return orders_pb2.AttachSignatureResponse(order=order_pb(d))

    async def GetOrder(self, req: orders_pb2.GetOrderRequest,
                       ctx: grpc.aio.ServicerContext) -> orders_pb2.GetOrderResponse:
        return orders_pb2.GetOrderResponse(order=order_pb(await self.o.describe(await self.o.get(req.order_id))))

    async def ListOrders(self, req: orders_pb2.ListOrdersRequest,
                         ctx: grpc.aio.ServicerContext) -> orders_pb2.ListOrdersResponse:
        return orders_pb2.ListOrdersResponse(orders=[order_pb(d) for d in await self.o.list_orders()])

    async def GetDrillRegister(self, req: orders_pb2.GetDrillRegisterRequest,
                               ctx: grpc.aio.ServicerContext) -> orders_pb2.DrillRegisterInfo:
        return orders_pb2.DrillRegisterInfo(**await self.o.drill_register())

    async def PrepareDrillRegister(self, req: orders_pb2.PrepareDrillRegisterRequest,
                                   ctx: grpc.aio.ServicerContext) -> orders_pb2.DrillRegisterInfo:
        return orders_pb2.DrillRegisterInfo(**await self.o.prepare_drill_register(
            add=list(req.add_models), remove=list(req.remove_models)))

    async def SetDrillRegister(self, req: orders_pb2.SetDrillRegisterRequest,
                               ctx: grpc.aio.ServicerContext) -> orders_pb2.DrillRegisterInfo:
        return orders_pb2.DrillRegisterInfo(**await self.o.set_drill_register(
            current_caller.get(), body=req.body, signatures=req.signatures))

    async def GetReport(self, req: orders_pb2.GetReportRequest,
                        ctx: grpc.aio.ServicerContext) -> orders_pb2.GetReportResponse:
        if req.format == "signed":
            signed = await self.o.signed_report(req.order_id)
            complete = json.loads(json.loads(signed)["body"])["verdict"] == "complete"
            return orders_pb2.GetReportResponse(content=signed.decode(), complete=complete)
        data = await self.o.report(req.order_id)
        if req.format in ("", "json"):

            content = json.dumps(data, indent=2, sort_keys=True)
        elif req.format == "markdown":
            content = order_report_markdown(data)
        else:
            raise InvalidInput("format must be json, markdown or signed")
        return orders_pb2.GetReportResponse(content=content, complete=data["state"] == "complete")

    async def GetReportKey(self, req: orders_pb2.GetReportKeyRequest,
                           ctx: grpc.aio.ServicerContext) -> orders_pb2.ReportKeyInfo:
        pem, key_id, label = await self.o.report_key()
        return orders_pb2.ReportKeyInfo(public_key_pem=pem, key_id=key_id, signer=label)


class AuditServicer(audit_pb2_grpc.AuditServicer):
    def __init__(self, audit: AuditLog) -> None:
        self.a = audit

    async def ListEvents(self, req: audit_pb2.ListEventsRequest,
                         ctx: grpc.aio.ServicerContext) -> audit_pb2.ListEventsResponse:
        limit = req.limit or 1000
        if limit > 5000:
            raise InvalidInput("limit must be at most 5000")
        rows = await self.a.list_events(req.after_seq, limit)
        events = []
        for seq, stored in rows:
            ev = audit_pb2.AuditEvent(seq=seq, stored=stored)
            try:
                rec, h = parse_stored(stored)
                ev.time_unix_ns = rec["time_ns"]
                ev.principal, ev.role, ev.host = rec["principal"], rec["role"], rec["host"]
                ev.action, ev.object, ev.result = rec["action"], rec["object"], rec["result"]
                ev.request_id, ev.hash = rec["request_id"], h
            except (InvalidInput, KeyError, TypeError):
                pass  # serve what is stored; verification will name it
            events.append(ev)
        next_after = rows[-1][0] if len(rows) == limit else 0
        return audit_pb2.ListEventsResponse(events=events, next_after_seq=next_after)

    async def GetCheckpoints(self, req: audit_pb2.GetCheckpointsRequest,
                             ctx: grpc.aio.ServicerContext) -> audit_pb2.GetCheckpointsResponse:
        cps = await self.a.checkpoints()
        return audit_pb2.GetCheckpointsResponse(
            checkpoints=[audit_pb2.Checkpoint(seq=s, body=b, signature=sig) for s, b, sig in cps],
            public_key=self.a.public_key_raw,
        )
