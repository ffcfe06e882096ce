"""Storage behind one small interface (see base.Store)."""

from s2_bridge.server.store.base import Store, StoreError
from s2_bridge.server.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoreError", "open_store"]


def open_store(backend: str, path: str) -> Store:
    if backend == "sqlite":
        return SQLiteStore(path)
    raise ValueError(f"unsupported storage backend {backend!r}")
