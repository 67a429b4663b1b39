"""The agent's unary calls to the control plane, as this host (over the custody stream's channel)."""

from __future__ import annotations

import grpc

from custos.agent.stream import CustodyStream, rpc_error
from custos.errors import FailedPrecondition, NotFound, Unauthorized
from custos.v1 import access_pb2, access_pb2_grpc, keys_pb2, keys_pb2_grpc, registry_pb2, registry_pb2_grpc

CALL_TIMEOUT = 60.0


class AgentCalls:
    """Unary calls over the custody stream's channel (so they share its mTLS identity)."""

    def __init__(self, stream: CustodyStream, timeout: float = CALL_TIMEOUT) -> None:
        self.stream = stream
        self.timeout = timeout

    def _channel(self) -> grpc.aio.Channel:
        ch = self.stream.channel
        if ch is None or not self.stream.connected:
            raise FailedPrecondition("not connected to the control plane")
        return ch

    async def unwrap(self, artifact: str, purpose: str) -> keys_pb2.UnwrapDataKeyResponse:
        try:
            return await keys_pb2_grpc.KeysStub(self._channel()).UnwrapDataKey(
                keys_pb2.UnwrapDataKeyRequest(artifact_id=artifact, purpose=purpose[:64]), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, f"unwrapping the key of artifact {artifact[:12]}") from None

    async def get_grant(self, grant_id: str) -> access_pb2.AccessGrant:
        """The access grant ``grant_id`` as the control plane sees it now (its state is the
        effective one: expired, revoked by a halt, ...). Raises NotFound, BackendUnavailable, ..."""
        try:
            resp = await access_pb2_grpc.AccessStub(self._channel()).Get(
                access_pb2.GetAccessRequest(id=grant_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, f"reading access grant {grant_id[:16]}") from None
        return resp.grant

    async def record_copy(self, artifact_id: str, path: str, form: int) -> None:
        try:
            await registry_pb2_grpc.RegistryStub(self._channel()).RecordCopy(
                registry_pb2.RecordCopyRequest(artifact_id=artifact_id, path=path, form=form),  # type: ignore[arg-type]
                timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, f"recording the copy at {path}") from None

    async def get_artifact(self, artifact: str) -> registry_pb2.Artifact:
        try:
            resp = await registry_pb2_grpc.RegistryStub(self._channel()).GetArtifact(
                registry_pb2.GetArtifactRequest(id=artifact), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, f"reading artifact {artifact[:12]}") from None
        return resp.artifact

    async def newest_artifact(self, model: str) -> str:
        try:
            resp = await registry_pb2_grpc.RegistryStub(self._channel()).ListArtifacts(
                registry_pb2.ListArtifactsRequest(model=model), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise Unauthorized(f"this agent may not look up the artifacts of model {model!r} "
                                   "(role 'agent' lacks Registry.ListArtifacts): pass --artifact ID") from None
            raise rpc_error(exc, f"listing the artifacts of model {model!r}") from None
        stored = [a for a in resp.artifacts if a.stored]
        if not stored:
            raise NotFound(f"model {model!r} has no stored artifact to run")
        return max(stored, key=lambda a: (a.created_at_unix_ns, a.id)).id
