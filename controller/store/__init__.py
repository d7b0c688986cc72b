"""Fleet state: the FleetStore interface, its records and errors, and ``open_store(url)``."""

from __future__ import annotations

from pathlib import Path

from controller.store.base import (
    BenchmarkRecord,
    Conflict,
    DeviceRecord,
    FleetStore,
    IngestItem,
    IngestResult,
    NotFound,
    RawPoint,
    SampleRow,
    StoreError,
    TokenRecord,
    TokenRejected,
    Touch,
)

__all__ = [
    "BenchmarkRecord",
    "Conflict",
    "DeviceRecord",
    "FleetStore",
    "IngestItem",
    "IngestResult",
    "NotFound",
    "RawPoint",
    "SampleRow",
    "StoreError",
    "TokenRecord",
    "TokenRejected",
    "Touch",
    "open_store",
    "sqlite_url",
]


def sqlite_url(path: str | Path) -> str:
    """The URL of a SQLite database file, e.g. ``sqlite:////var/lib/slmops/fleet.db``."""
    return f"sqlite:///{path}"


def open_store(url: str) -> FleetStore:
    """Open (creating tables if needed) the fleet database at ``url``: ``sqlite:///path`` or
    ``postgresql://user@host/db``. Raises StoreError with what to do if it can't."""
    from controller.store.sql import SqlFleetStore  # SQLAlchemy is imported only when used

    return SqlFleetStore(url)
