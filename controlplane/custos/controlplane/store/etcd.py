"""etcd Store: the production backend, on a cluster of one or more members.

Keys live under a prefix (default ``/custos/``) so one cluster can hold several
deployments. ``commit`` is a single etcd Txn: the checks compare mod revisions
(0 means the key is absent, exactly etcd's semantics), the writes are the
success branch, so a crash at any moment leaves all of a change or none of it.

Failover (store/etcd_cluster.py) tries a call again on another member. For a
read that is plain. A commit whose answer was lost (the member died after
sending it on) may have landed: the next attempt carries, in its failure branch,
reads of the keys it writes, and a failed check whose read-back shows exactly
this commit's writes at one revision counts as the earlier attempt's success.
So a commit lands at most once and reports truly whether it did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aetcd import rpc

from custos.controlplane.store.base import Entry, Store, Txn, check_key, prefix_end
from custos.controlplane.store.etcd_cluster import (
    REQUIRE_LEADER,
    ClusterClient,
    Endpoint,
    EtcdTLS,
    parse_endpoints,
)


class EtcdStore(Store):
    kind = "etcd"

    def __init__(
        self,
        endpoints: str | Sequence[Endpoint] = "127.0.0.1:2379",
        *,
        prefix: str = "/custos/",
        timeout: float = 5.0,
        retry_for: float | None = None,
        tls: EtcdTLS | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        """``endpoints``: ``"h1:2379,h2:2379"`` or parsed Endpoints. ``timeout`` bounds one
        attempt on one member, ``retry_for`` (default 3 x timeout) all attempts of a call.
        TLS when ``tls`` is given or any of ``ca_file``/``cert_file``/``key_file``.

        Raises InvalidInput (bad endpoint, unreadable TLS file).
        """
        eps = parse_endpoints(endpoints) if isinstance(endpoints, str) else list(endpoints)
        if not prefix.endswith("/"):
            prefix += "/"
        if tls is None and (ca_file or cert_file or key_file):
            tls = EtcdTLS(ca_file, cert_file, key_file)
        self._prefix = prefix
        self.cluster = ClusterClient(eps, tls=tls, timeout=timeout,
                                     retry_for=3 * timeout if retry_for is None else retry_for)
        self.endpoint = str(self.cluster)
        self._seen = 0  # the highest store revision any answer carried

    def _k(self, key: str) -> bytes:
        check_key(key)
        return (self._prefix + key).encode()

    def _unk(self, raw: bytes) -> str:
        return raw.decode()[len(self._prefix):]

    async def _range(self, what: str, req: rpc.RangeRequest) -> Any:
        async def run(kv: rpc.KVStub, limit: float, _: int) -> Any:
            return await kv.Range(req, timeout=limit, metadata=REQUIRE_LEADER)

        resp = await self.cluster.call(what, run)
        self._seen = max(self._seen, int(resp.header.revision))
        return resp

    async def _txn(self, what: str, make: Callable[[int], rpc.TxnRequest]) -> tuple[int, Any]:
        """Run the TxnRequest ``make(attempt)`` builds; (attempt, response)."""
        async def run(kv: rpc.KVStub, limit: float, attempt: int) -> tuple[int, Any]:
            return attempt, await kv.Txn(make(attempt), timeout=limit, metadata=REQUIRE_LEADER)

        attempt, resp = await self.cluster.call(what, run)
        self._seen = max(self._seen, int(resp.header.revision))
        return attempt, resp

    async def _read(self, what: str, keys: list[str], revision: int = 0) -> dict[str, Any]:
        """``keys`` (KeyValue or None each) as of ``revision`` (0: now) in one round trip.
        Raises StoreUnavailable (also when that revision was compacted away)."""
        req = rpc.TxnRequest(success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=self._k(k), revision=revision))
                                      for k in keys])
        _, resp = await self._txn(what, lambda _attempt: req)
        return _by_key(keys, resp)

    async def get(self, key: str) -> Entry | None:
        resp = await self._range("get", rpc.RangeRequest(key=self._k(key)))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return Entry(key, bytes(kv.value), int(kv.mod_revision))

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> list[Entry]:
        start = self._k(prefix)
        if start_after is not None and start_after >= prefix:
            start = self._k(start_after) + b"\x00"
        resp = await self._range("range", rpc.RangeRequest(
            key=start, range_end=self._k(prefix_end(prefix)), limit=limit,
            sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.KEY))
        return [Entry(self._unk(kv.key), bytes(kv.value), int(kv.mod_revision)) for kv in resp.kvs]

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Many keys in one round trip per 100: a read-only etcd Txn of Range ops."""
        wanted = list(dict.fromkeys(keys))
        out: dict[str, Entry] = {}
        for i in range(0, len(wanted), 100):
            for key, kv in (await self._read("get_many", wanted[i:i + 100])).items():
                if kv is not None:
                    out[key] = Entry(key, bytes(kv.value), int(kv.mod_revision))
        return out

    async def commit(self, txn: Txn) -> bool:
        """Apply ``txn`` atomically if every check holds; False on a failed check (also
        after a failover, unless the lost attempt is found to have landed). Raises
        InvalidInput (a bad txn), StoreUnavailable (down, or an outcome it cannot tell)."""
        txn.validate()
        compare = [rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=self._k(k), mod_revision=rev)
                   for k, rev in txn.checks.items()]
        success = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._k(k))) for k in txn.deletes]
        success += [rpc.RequestOp(request_put=rpc.PutRequest(key=self._k(k), value=v)) for k, v in txn.puts.items()]
        written = [*txn.puts, *txn.deletes]
        read_back = [rpc.RequestOp(request_range=rpc.RangeRequest(key=self._k(k))) for k in written]
        base = self._seen  # had the first attempt landed, its revision would be above this

        def make(attempt: int) -> rpc.TxnRequest:
            # Only a retry needs the read-back: an earlier attempt may have landed.
            return rpc.TxnRequest(compare=compare, success=success, failure=read_back if attempt > 1 else [])

        attempt, resp = await self._txn("commit", make)
        if resp.succeeded:
            return True
        if attempt == 1 or not compare:
            return False
        return await self._landed(txn, _by_key(written, resp), base)

    async def _landed(self, txn: Txn, now: dict[str, Any], base: int) -> bool:
        """After a lost answer and a failed check: did an earlier attempt land?

        With puts: yes when, at one revision R above ``base``, every key it puts holds its
        value (stamped R) and every key it deletes is absent — read now, or as of R when a
        key was written again since. Deletes only: yes when the keys are gone and its
        checks held as of ``base``. Either way the commit's writes are in the store.

        Raises StoreUnavailable when it cannot tell (the store went away again, or the
        history it must read was compacted): the outcome is then unknown, not a conflict."""
        written = list(now)
        if txn.puts:
            revs = sorted({kv.mod_revision for k, kv in now.items() if kv is not None and k in txn.puts
                           and bytes(kv.value) == txn.puts[k] and kv.mod_revision > base})
            if not revs:
                return False
            at = revs[0]
            if _matches(txn, now, at):
                return True
            return _matches(txn, await self._read("commit read-back", written, at), at)
        if any(now[k] is not None for k in txn.deletes):
            return False
        then = await self._read("commit read-back", list(txn.checks), base)
        return all((then[k].mod_revision if then[k] is not None else 0) == rev for k, rev in txn.checks.items())

    async def revision(self) -> int:
        resp = await self._range("revision", rpc.RangeRequest(key=self._k("meta/revision-probe"), count_only=True))
        return int(resp.header.revision)

    async def watch(self, prefix: str) -> AsyncIterator[str]:
        """Keys written under ``prefix`` after the call; across a failover it resumes
        from the revision after the last one delivered. Raises StoreUnavailable."""
        start = await self.revision() + 1
        async for events in self.cluster.watch(self._k(prefix), self._k(prefix_end(prefix)), start):
            for event in events:
                yield self._unk(bytes(event.kv.key))

    async def close(self) -> None:
        await self.cluster.close()


def _by_key(keys: list[str], resp: Any) -> dict[str, Any]:
    """The KeyValue (or None) each Range op of a Txn answer found, by key."""
    return {k: op.response_range.kvs[0] if op.response_range.kvs else None
            for k, op in zip(keys, resp.responses, strict=True)}


def _matches(txn: Txn, kvs: dict[str, Any], at: int) -> bool:
    """Every put of ``txn`` holds its value stamped ``at``; every delete is absent."""
    for k, v in txn.puts.items():
        kv = kvs[k]
        if kv is None or bytes(kv.value) != v or kv.mod_revision != at:
            return False
    return all(kvs[k] is None for k in txn.deletes if k not in txn.puts)
