"""Store backends: SQLite (embedded default) and etcd (production)."""

from __future__ import annotations

from collections.abc import Mapping

from custos.controlplane.store.base import Entry, Store, StoreUnavailable, Txn
from custos.controlplane.store.etcd import EtcdStore
from custos.controlplane.store.etcd_cluster import EtcdTLS, parse_etcd_url
from custos.controlplane.store.sqlite import SQLiteStore
from custos.errors import InvalidInput

__all__ = ["Entry", "Store", "StoreUnavailable", "Txn", "open_store"]


def open_store(url: str, *, tls: Mapping[str, str] | None = None) -> Store:
    """Open a store from a URL: ``sqlite:///path/custos.db``, or an etcd cluster as
    ``etcd://h1:2379,h2:2379,h3:2379[/prefix]`` (``etcds://`` for TLS). ``tls`` holds
    the config's ``ca_file``/``cert_file``/``key_file`` for etcd; any of them means TLS.

    Raises StoreUnavailable / InvalidInput.
    """
    tls = {k: v for k, v in (tls or {}).items() if v}
    if url.startswith("sqlite://"):
        if tls:
            raise InvalidInput("[store] ca_file/cert_file/key_file apply to an etcd store only")
        path = url[len("sqlite://"):]
        if not path:
            raise InvalidInput("sqlite store URL needs a path: sqlite:///path/to/custos.db")
        return SQLiteStore(path)
    if url.startswith(("etcd://", "etcds://")):
        parsed = parse_etcd_url(url)
        unknown = set(tls) - {"ca_file", "cert_file", "key_file"}
        if unknown:
            raise InvalidInput(f"unknown etcd TLS option(s): {', '.join(sorted(unknown))}")
        want_tls = parsed.tls or bool(tls)
        return EtcdStore(parsed.endpoints, prefix=parsed.prefix, tls=EtcdTLS(**tls) if want_tls else None)
    raise InvalidInput(f"unknown store URL {url!r}: want sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...]")
