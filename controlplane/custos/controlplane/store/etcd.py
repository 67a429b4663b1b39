"""etcd Store: the production backend, through the ``aetcd`` asyncio client.

Keys live under a prefix (default ``/custos/``) so one cluster can hold several
deployments. ``commit`` is a single etcd Txn: the checks compare mod revisions
(0 means the key is absent, exactly etcd's semantics), the writes are the
success branch, so a crash at any moment leaves all of a change or none of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from custos.controlplane.store.base import Entry, Store, StoreUnavailable, Txn, check_key, prefix_end


class _TLSClient(aetcd.Client):
    """aetcd opens plaintext channels only; production etcd wants mTLS."""

    def __init__(self, *, credentials: grpc.ChannelCredentials | None, **kw: Any) -> None:
        super().__init__(**kw)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._credentials is None or self._connected.is_set():
            await super().connect()
            return
        target = f"{self._host}:{self._port}"
        self.channel = grpc.aio.secure_channel(target, self._credentials, options=list(self._options.items()))
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout)
        self._connected.set()


class EtcdStore(Store):
    kind = "etcd"

    def __init__(
        self,
        endpoint: str = "127.0.0.1:2379",
        *,
        prefix: str = "/custos/",
        timeout: float = 5.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise StoreUnavailable(f"bad etcd endpoint {endpoint!r}: want HOST:PORT")
        if not prefix.endswith("/"):
            prefix += "/"
        self._prefix = prefix
        self._timeout = timeout
        creds = None
        if ca_file:
            def read(p: str | None) -> bytes | None:
                if p is None:
                    return None
                with open(p, "rb") as f:
                    return f.read()

            creds = grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
        self._client = _TLSClient(
            host=host, port=int(port), timeout=int(max(1, timeout)), credentials=creds
        )
        self.endpoint = endpoint

    def _k(self, key: str) -> bytes:
        check_key(key)
        return (self._prefix + key).encode()

    def _unk(self, raw: bytes) -> str:
        return raw.decode()[len(self._prefix):]

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (aetcd.exceptions.ClientError, grpc.RpcError, OSError) as exc:
            raise StoreUnavailable(f"etcd {self.endpoint}: {exc or type(exc).__name__}") from None

    async def get(self, key: str) -> Entry | None:
        got = await self._call(self._client.get(self._k(key)))
        if got is None:
            return None
        return Entry(key, bytes(got.value), int(got.mod_revision))

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> list[Entry]:
        start = self._k(prefix)
        if start_after is not None and start_after >= prefix:
            start = self._k(start_after) + b"\x00"
        req = rpc.RangeRequest(
            key=start,
            range_end=self._k(prefix_end(prefix)),
            limit=limit,
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
        )

        async def run() -> Any:
            await self._client.connect()
            return await self._client.kvstub.Range(req, timeout=self._timeout)

        resp = await self._call(run())
        return [Entry(self._unk(kv.key), bytes(kv.value), int(kv.mod_revision)) for kv in resp.kvs]

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Many keys in one round trip per 100: a read-only etcd Txn of Range ops."""
        t = self._client.transactions
        wanted = list(dict.fromkeys(keys))
        out: dict[str, Entry] = {}
        for i in range(0, len(wanted), 100):
            part = wanted[i:i + 100]
            _, responses = await self._call(self._client.transaction(
                compare=[], success=[t.get(self._k(k)) for k in part], failure=[]))
            for key, resp in zip(part, responses, strict=True):
                for value, meta in resp:
                    out[key] = Entry(key, bytes(value), int(meta.mod_revision))
        return out

    async def commit(self, txn: Txn) -> bool:
        txn.validate()
        t = self._client.transactions
        compare = [t.mod(self._k(k)) == rev for k, rev in txn.checks.items()]
        success: list[Any] = [t.delete(self._k(k)) for k in txn.deletes]
        success += [t.put(self._k(k), v) for k, v in txn.puts.items()]
        ok, _ = await self._call(self._client.transaction(compare=compare, success=success, failure=[]))
        return bool(ok)

    async def revision(self) -> int:
        async def run() -> Any:
            await self._client.connect()
            return await self._client.kvstub.Range(
                rpc.RangeRequest(key=self._k("meta/revision-probe"), count_only=True),
                timeout=self._timeout,
            )

        resp = await self._call(run())
        return int(resp.header.revision)

    async def watch(self, prefix: str) -> AsyncIterator[str]:
        start = self._k(prefix)
        try:
            watch = await self._client.watch_prefix(start)
        except (aetcd.exceptions.ClientError, grpc.RpcError, OSError) as exc:
            raise StoreUnavailable(f"etcd {self.endpoint}: watch failed: {exc}") from None
        try:
            async for event in watch:
                yield self._unk(bytes(event.kv.key))
        except (aetcd.exceptions.ClientError, grpc.RpcError) as exc:
            raise StoreUnavailable(f"etcd {self.endpoint}: watch ended: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    async def close(self) -> None:
        # Closing a dead channel must not mask the error that brought us here.
        with contextlib.suppress(Exception):
            await self._client.close()
