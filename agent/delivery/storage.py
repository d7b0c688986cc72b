"""Is there room on the device's disk for what a release needs? Checked before a download starts,
so a full disk ends in ``failed: insufficient storage`` with the numbers, not in a half-written
blob, and a margin (``reserve_bytes``) stays free for the agent's own state files and logs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEFAULT_RESERVE = 64 * 2**20


class InsufficientStorage(Exception):
    """Not enough free disk space; the message is the reason reported upstream."""

    def __init__(self, message: str, *, need_bytes: int, free_bytes: int, reserve_bytes: int,
                 path: Path) -> None:
        super().__init__(message)
        self.need_bytes, self.free_bytes, self.reserve_bytes = need_bytes, free_bytes, reserve_bytes
        self.path = path


def format_bytes(n: int | float) -> str:
    """48.0 MB, 1.25 GB: decimal units, as disk sizes are sold and as ``df -H`` shows them."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest parent that exists (a data dir not created yet is checked on the
    file system it will be created on)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(path: Path, need_bytes: int, *, what: str, reserve_bytes: int = DEFAULT_RESERVE) -> None:
    """Raise InsufficientStorage unless ``need_bytes`` more fit on the file system of ``path``
    with ``reserve_bytes`` still free afterwards. ``what`` completes "need N more ...", e.g.
    "to stage release 7 (48.0 MB to download + 4.4 MB staging)"."""
    if need_bytes < 0 or reserve_bytes < 0:
        raise ValueError(f"need_bytes ({need_bytes}) and reserve_bytes ({reserve_bytes}) must be >= 0")
    where = existing_parent(path)
    free = shutil.disk_usage(where).free
    if need_bytes == 0 or free - reserve_bytes >= need_bytes:
        return
    raise shortage(path, need_bytes, what=what, reserve_bytes=reserve_bytes, free_bytes=free,
                   then="free some space there and assign the model again")


def has_room(path: Path, need_bytes: int, reserve_bytes: int = DEFAULT_RESERVE) -> bool:
    """Would ``need_bytes`` more fit on the file system of ``path``, ``reserve_bytes`` kept free?"""
    return need_bytes <= 0 or shutil.disk_usage(existing_parent(path)).free - reserve_bytes >= need_bytes


def shortage(path: Path, need_bytes: int, *, what: str, reserve_bytes: int = DEFAULT_RESERVE,
             free_bytes: int | None = None, then: str) -> InsufficientStorage:
    """The InsufficientStorage that says ``need_bytes`` more are needed ``what`` and how much is
    free on the file system of ``path`` now; ``then`` says what happens or what to do next."""
    where = existing_parent(path)
    free = shutil.disk_usage(where).free if free_bytes is None else free_bytes
    margin = f", of which {format_bytes(reserve_bytes)} are kept in reserve" if reserve_bytes else ""
    return InsufficientStorage(
        f"insufficient storage: need {format_bytes(need_bytes)} more {what}, have {format_bytes(free)} free "
        f"on {where} ({need_bytes} bytes needed, {free} free{margin}); {then}",
        need_bytes=need_bytes, free_bytes=free, reserve_bytes=reserve_bytes, path=where)
