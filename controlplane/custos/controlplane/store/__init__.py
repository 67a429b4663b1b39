"""Store backends: SQLite (embedded default) and etcd (production)."""

from __future__ import annotations

from custos.controlplane.store.base import Entry, Store, StoreUnavailable, Txn
from custos.controlplane.store.etcd import EtcdStore
from custos.controlplane.store.sqlite import SQLiteStore
from custos.errors import InvalidInput

__all__ = ["Entry", "Store", "StoreUnavailable", "Txn", "open_store"]


def open_store(url: str) -> Store:
    """Open a store from a URL: ``sqlite:///path/custos.db`` or ``etcd://host:port[/prefix]``.

    Raises StoreUnavailable / InvalidInput.
    """

    if url.startswith("sqlite://"):

        path = url[len("sqlite://"):]
        if not path:
            raise InvalidInput("sqlite store URL needs a path: sqlite:///path/to/custos.db")
        return SQLiteStore(path)
    if url.startswith("etcd://"):

        rest = url[len("etcd://"):]
        endpoint, _, prefix = rest.partition("/")
        return EtcdStore(endpoint, prefix="/" + (prefix or "custos") + "/")
    raise InvalidInput(f"unknown store URL {url!r}: want sqlite:///PATH or etcd://HOST:PORT")
